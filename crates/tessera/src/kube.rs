//! What kube-apiserver needs to trust tessera's id_tokens: the legacy `--oidc-*` flags and the
//! structured `AuthenticationConfiguration` (`--authentication-config`), whose claim mappings
//! also carry the id_token's `sid` into the user's `extra`. The cluster's own audit log then
//! names, on every request, the tessera session that made it.

use std::path::PathBuf;

use serde::Serialize;
use tessera_core::jwt::Algorithm;

/// The `extra` key under which kube-apiserver records the tessera session (`sid`) of a request.
pub const SESSION_ID_EXTRA: &str = "tessera.dev/session-id";

/// The `apiVersion` of the structured authentication configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthenticationConfigVersion {
    /// `apiserver.config.k8s.io/v1`, stable since Kubernetes 1.34.
    V1,
    /// `apiserver.config.k8s.io/v1beta1`, Kubernetes 1.30 to 1.33.
    V1beta1,
}

impl AuthenticationConfigVersion {
    fn api_version(self) -> &'static str {
        match self {
            AuthenticationConfigVersion::V1 => "apiserver.config.k8s.io/v1",
            AuthenticationConfigVersion::V1beta1 => "apiserver.config.k8s.io/v1beta1",
        }
    }
}

/// The issuer kube-apiserver is to trust, for whom, and with which CA.
#[derive(Debug)]
pub struct ApiserverTrust {
    /// The issuer URL, exactly as in the id_tokens' `iss`.
    pub issuer: String,
    /// The audience kube-apiserver accepts: the client kubectl logs in with.
    pub client_id: String,
    /// The CA that signed tessera's certificate, when it is not in the system's roots: its
    /// path (for the flag) and its PEM (inlined in the structured form).
    pub certificate_authority: Option<(PathBuf, String)>,
    /// The id_tokens' algorithm (`tokens.signing_alg`). The flags accept RS256 unless told
    /// otherwise; the structured form accepts RS256 and ES256 as they are; neither EdDSA.
    pub signing_alg: Algorithm,
}

/// Why kube-apiserver cannot verify id_tokens signed with `alg`, if it cannot.
pub fn unverifiable_by_apiserver(alg: Algorithm) -> Option<String> {
    match alg {
        Algorithm::RS256 | Algorithm::ES256 => None,
        Algorithm::EdDSA => Some(format!(
            "kube-apiserver does not accept {} id_tokens; set tokens.signing_alg to RS256 or ES256",
            alg.as_str()
        )),
    }
}

impl ApiserverTrust {
    /// The legacy flags. They have no way to map `sid`; prefer the structured form.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--oidc-issuer-url={}", self.issuer),
            format!("--oidc-client-id={}", self.client_id),
            "--oidc-username-claim=sub".to_owned(),
            "--oidc-username-prefix=oidc:".to_owned(),
            "--oidc-groups-claim=groups".to_owned(),
            "--oidc-groups-prefix=oidc:".to_owned(),
        ];
        if let Some((path, _)) = &self.certificate_authority {
            flags.push(format!("--oidc-ca-file={}", path.display()));
        }
        if self.signing_alg != Algorithm::RS256 {
            flags.push(format!("--oidc-signing-algs={}", self.signing_alg.as_str()));
        }
        flags
    }

    /// The structured `AuthenticationConfiguration` as YAML.
    pub fn authentication_configuration(
        &self,
        version: AuthenticationConfigVersion,
    ) -> Result<String, yaml_serde::Error> {
        let configuration = AuthenticationConfiguration {
            api_version: version.api_version(),
            kind: "AuthenticationConfiguration",
            jwt: vec![Jwt {
                issuer: Issuer {
                    url: &self.issuer,
                    audiences: vec![&self.client_id],
                    certificate_authority: self
                        .certificate_authority
                        .as_ref()
                        .map(|(_, pem)| pem.as_str()),
                },
                claim_mappings: ClaimMappings {
                    username: PrefixedClaim {
                        claim: "sub",
                        prefix: "oidc:",
                    },
                    groups: PrefixedClaim {
                        claim: "groups",
                        prefix: "oidc:",
                    },
                    extra: vec![ExtraMapping {
                        key: SESSION_ID_EXTRA,
                        value_expression: "claims.sid",
                    }],
                },
            }],
        };
        yaml_serde::to_string(&configuration)
    }
}

// The shape of `apiserver.config.k8s.io` `AuthenticationConfiguration`, as far as tessera fills it.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticationConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    jwt: Vec<Jwt<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Jwt<'a> {
    issuer: Issuer<'a>,
    claim_mappings: ClaimMappings,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Issuer<'a> {
    url: &'a str,
    audiences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority: Option<&'a str>,
}

#[derive(Serialize)]
struct ClaimMappings {
    username: PrefixedClaim,
    groups: PrefixedClaim,
    extra: Vec<ExtraMapping>,
}

#[derive(Serialize)]
struct PrefixedClaim {
    claim: &'static str,
    prefix: &'static str,
}

/// A CEL expression over the token's claims, recorded in `user.extra[key]`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtraMapping {
    key: &'static str,
    value_expression: &'static str,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn trust(ca: bool) -> ApiserverTrust {
        ApiserverTrust {
            issuer: "https://tessera.example.com".into(),
            client_id: "kubernetes".into(),
            certificate_authority: ca.then(|| {
                (
                    PathBuf::from("/etc/kubernetes/tessera-ca.pem"),
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                )
            }),
            signing_alg: Algorithm::RS256,
        }
    }

    fn parsed(trust: &ApiserverTrust, version: AuthenticationConfigVersion) -> serde_json::Value {
        yaml_serde::from_str(&trust.authentication_configuration(version).unwrap()).unwrap()
    }

    #[test]
    fn the_stable_form_maps_sub_groups_and_the_session_id_into_extra() {
        let config = parsed(&trust(true), AuthenticationConfigVersion::V1);
        assert_eq!(config["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(config["kind"], "AuthenticationConfiguration");
        let jwt = &config["jwt"][0];
        assert_eq!(jwt["issuer"]["url"], "https://tessera.example.com");
        assert_eq!(
            jwt["issuer"]["audiences"],
            serde_json::json!(["kubernetes"])
        );
        assert_eq!(
            jwt["issuer"]["certificateAuthority"],
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        );
        let mappings = &jwt["claimMappings"];
        assert_eq!(mappings["username"]["claim"], "sub");
        assert_eq!(mappings["username"]["prefix"], "oidc:");
        assert_eq!(mappings["groups"]["claim"], "groups");
        assert_eq!(
            mappings["extra"],
            serde_json::json!([{"key": "tessera.dev/session-id", "valueExpression": "claims.sid"}])
        );
    }

    #[test]
    fn older_clusters_get_v1beta1_and_no_ca_when_the_system_roots_suffice() {
        let config = parsed(&trust(false), AuthenticationConfigVersion::V1beta1);
        assert_eq!(config["apiVersion"], "apiserver.config.k8s.io/v1beta1");
        assert!(
            config["jwt"][0]["issuer"]
                .get("certificateAuthority")
                .is_none()
        );
    }

    #[test]
    fn the_flags_name_the_ca_file_only_when_there_is_one() {
        assert!(
            trust(true)
                .flags()
                .contains(&"--oidc-ca-file=/etc/kubernetes/tessera-ca.pem".to_owned())
        );
        assert!(
            !trust(false)
                .flags()
                .iter()
                .any(|f| f.starts_with("--oidc-ca-file"))
        );
    }

    #[test]
    fn the_flags_name_the_signing_algorithm_only_when_it_is_not_rs256() {
        assert!(
            !trust(false)
                .flags()
                .iter()
                .any(|f| f.starts_with("--oidc-signing-algs"))
        );
        let es256 = ApiserverTrust {
            signing_alg: Algorithm::ES256,
            ..trust(false)
        };
        assert!(
            es256
                .flags()
                .contains(&"--oidc-signing-algs=ES256".to_owned())
        );
    }

    #[test]
    fn eddsa_id_tokens_are_refused_with_the_setting_to_change() {
        assert_eq!(unverifiable_by_apiserver(Algorithm::RS256), None);
        assert_eq!(unverifiable_by_apiserver(Algorithm::ES256), None);
        let refusal = unverifiable_by_apiserver(Algorithm::EdDSA).unwrap();
        assert!(refusal.contains("tokens.signing_alg"), "{refusal}");
    }
}
