// The peer of `bench/refresh --peer node-oidc-provider`: node's certified `oidc-provider`
// (the version bench/refresh installs into target/oidc-provider) with one public client
// `kubernetes` like tessera's dev client: authorization code with PKCE, RS256 id_tokens,
// rotating refresh tokens, the library's in-memory adapter, plain HTTP on 127.0.0.1.
// Interactions approve at once as user `dev` (no browser, no form), so the benchmark can mint
// sessions through /auth like a browser that is already signed in.
// Prints `issuer: http://127.0.0.1:PORT` once it listens.
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsa = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'rs256-bench' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'kubernetes',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: ['http://127.0.0.1:41234/callback'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
    },
  ],
  jwks: { keys: [rsa] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  findAccount: async (ctx, accountId) => ({
    accountId,
    claims: async () => ({
      sub: accountId,
      name: accountId,
      preferred_username: accountId,
      email: `${accountId}@example.com`,
      email_verified: true,
      groups: [accountId, 'system:authenticated'],
    }),
  }),
  // Like tessera: every code exchange of the client gets a refresh token, rotated on each use.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: { AccessToken: 60, IdToken: 60, RefreshToken: 900, AuthorizationCode: 60 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // Scope claims (groups among them) in the id_token, as kube-apiserver needs and tessera does.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));
// Why a grant failed (the answer only says invalid_grant): the first few, for the record.
let grantErrors = 0;
provider.on('grant.error', (ctx, error) => {
  if (grantErrors++ < 5) console.error('grant.error', error.error_detail ?? error.message);
});

const callback = provider.callback();
server.on('request', async (req, res) => {
  if (!req.url.startsWith('/interaction/')) {
    callback(req, res);
    return;
  }
  try {
    const { params } = await provider.interactionDetails(req, res);
    const grant = new provider.Grant({ accountId: 'dev', clientId: params.client_id });
    grant.addOIDCScope(params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: 'dev' }, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
  } catch (error) {
    console.error('interaction failed', error);
    res.statusCode = 500;
    res.end();
  }
});
console.log(`issuer: ${issuer}`);
