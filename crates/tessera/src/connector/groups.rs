//! The `groups:` mapping every connector's groups go through: rename, then include, then
//! prefix (so `include` is written against the names RBAC will see, minus the prefix).

use crate::config::GroupMapping;

/// `groups` after `mapping`, in their order, without duplicates.
pub(crate) fn map(groups: &[String], mapping: &GroupMapping) -> Vec<String> {
    let mut mapped: Vec<String> = Vec::with_capacity(groups.len());
    for group in groups {
        let renamed = mapping.rename.get(group).unwrap_or(group);
        let kept =
            mapping.include.is_empty() || mapping.include.iter().any(|r| r.is_match(renamed));
        let name = format!("{}{renamed}", mapping.prefix);
        if kept && !mapped.contains(&name) {
            mapped.push(name);
        }
    }
    mapped
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use regex::Regex;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn groups_are_renamed_then_filtered_then_prefixed() {
        let mapping = GroupMapping {
            prefix: "corp:".into(),
            include: vec![
                Regex::new("^k8s-").unwrap(),
                Regex::new("^cluster-admins$").unwrap(),
            ],
            rename: [("Domain Admins".to_owned(), "cluster-admins".to_owned())].into(),
        };
        let from = names(&["staff", "k8s-dev", "Domain Admins", "k8s-dev", "xk8s-"]);
        assert_eq!(
            map(&from, &mapping),
            names(&["corp:k8s-dev", "corp:cluster-admins"])
        );
    }

    #[test]
    fn without_a_mapping_every_group_is_kept_as_it_is() {
        let from = names(&["staff", "Domain Admins"]);
        assert_eq!(map(&from, &GroupMapping::default()), from);
    }
}
