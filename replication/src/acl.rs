//! Kafka's ACLs as data: what the metadata log stores (`CreateAcls`,
//! `DeleteAcls`) and every broker's image holds. What an ACL allows (deny
//! wins, implied operations, super users) is the broker's authorizer
//! (`net/src/security/acl.rs`); here is only what a binding is and which
//! bindings a filter names, which the image needs to apply a deletion the
//! same way on every node.

use serde::{Deserialize, Serialize};

/// Kafka's name for the one cluster resource.
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// A literal resource name matching every resource of its type.
pub const WILDCARD_RESOURCE: &str = "*";
/// The principal matching every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The host matching every host.
pub const WILDCARD_HOST: &str = "*";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

/// How a binding's resource name applies: to the resource of that name
/// (`*`: every resource of the type), or to every resource whose name
/// starts with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPatternType {
    Literal,
    Prefixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPermission {
    Allow,
    Deny,
}

/// Kafka's numbers for these enums on the wire (`ResourceType.code()`,
/// `PatternType`, `AclOperation`, `AclPermissionType`): 0 is UNKNOWN and 1
/// ANY in each (filters only); the values below are the rest, in Kafka's
/// order. Kafka's names, case-insensitive, are what kafka-acls takes.
macro_rules! kafka_codes {
    ($type:ident { $($variant:ident = $code:literal),* $(,)? }) => {
        impl $type {
            pub const ALL_VALUES: &'static [$type] = &[$($type::$variant),*];

            pub fn kafka_code(self) -> i8 {
                match self {
                    $($type::$variant => $code),*
                }
            }

            pub fn from_kafka_code(code: i8) -> Option<$type> {
                match code {
                    $($code => Some($type::$variant),)*
                    _ => None,
                }
            }

            /// The value Kafka calls `name`, in any case and with or
            /// without underscores (`IdempotentWrite`, `IDEMPOTENT_WRITE`).
            pub fn parse(name: &str) -> Option<$type> {
                let folded: String = name.chars().filter(|c| *c != '_' && *c != '-').collect();
                $type::ALL_VALUES.iter().copied().find(|value| format!("{value:?}").eq_ignore_ascii_case(&folded))
            }
        }
    };
}

kafka_codes!(AclResourceType { Topic = 2, Group = 3, Cluster = 4, TransactionalId = 5 });
kafka_codes!(AclPatternType { Literal = 3, Prefixed = 4 });
kafka_codes!(AclOperation {
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
});
kafka_codes!(AclPermission { Deny = 2, Allow = 3 });

/// Kafka's ANY, in every enum's filter.
pub const KAFKA_CODE_ANY: i8 = 1;
/// Kafka's MATCH pattern type (a filter only).
pub const KAFKA_CODE_MATCH: i8 = 2;

/// One ACL: `principal` from `host` may (Allow) or may not (Deny) do
/// `operation` on the resources the pattern names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: AclResourceType,
    pub resource_name: String,
    pub pattern_type: AclPatternType,
    /// `Type:name` (`User:alice`; `User:*` for everyone).
    pub principal: String,
    /// An ip address, or `*` for every host.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

/// Which pattern types a filter matches (Kafka's `PatternType` as a
/// filter: `Any`, `Match` or one exact type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclPatternFilter {
    /// Every binding whose resource name is the filter's (any pattern type).
    Any,
    /// Every binding that applies to the filter's resource name: literal
    /// ones of that name or `*`, prefixed ones that are a prefix of it.
    Match,
    Exactly(AclPatternType),
}

/// Kafka's ACL binding filter: each None matches anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<AclResourceType>,
    pub resource_name: Option<String>,
    pub pattern: AclPatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<AclOperation>,
    pub permission: Option<AclPermission>,
}

impl AclFilter {
    /// A filter matching every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: AclPatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// Whether `binding` is one this filter names (Kafka's
    /// `AclBindingFilter.matches`).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let equal = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|want| want == have);
        self.resource_type.is_none_or(|t| t == binding.resource_type)
            && self.pattern_matches(binding)
            && equal(&self.principal, &binding.principal)
            && equal(&self.host, &binding.host)
            && self.operation.is_none_or(|op| op == binding.operation)
            && self.permission.is_none_or(|p| p == binding.permission)
    }

    fn pattern_matches(&self, binding: &AclBinding) -> bool {
        let Some(name) = self.resource_name.as_deref() else {
            return match self.pattern {
                AclPatternFilter::Any | AclPatternFilter::Match => true,
                AclPatternFilter::Exactly(pattern) => pattern == binding.pattern_type,
            };
        };
        match self.pattern {
            AclPatternFilter::Any => binding.resource_name == name,
            AclPatternFilter::Exactly(pattern) => pattern == binding.pattern_type && binding.resource_name == name,
            AclPatternFilter::Match => match binding.pattern_type {
                AclPatternType::Literal => binding.resource_name == name || binding.resource_name == WILDCARD_RESOURCE,
                AclPatternType::Prefixed => name.starts_with(binding.resource_name.as_str()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(pattern_type: AclPatternType, name: &str) -> AclBinding {
        AclBinding {
            resource_type: AclResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        }
    }

    /// The numbers kafka-acls sends map both ways, and its names parse.
    #[test]
    fn kafka_codes_and_names_map_both_ways() {
        assert_eq!(AclOperation::from_kafka_code(3), Some(AclOperation::Read));
        assert_eq!(AclOperation::from_kafka_code(12), Some(AclOperation::IdempotentWrite));
        assert_eq!(AclOperation::from_kafka_code(KAFKA_CODE_ANY), None, "ANY is a filter only");
        assert_eq!(AclOperation::from_kafka_code(13), None, "CREATE_TOKENS: no delegation tokens");
        for op in AclOperation::ALL_VALUES {
            assert_eq!(AclOperation::from_kafka_code(op.kafka_code()), Some(*op));
        }
        assert_eq!(AclResourceType::from_kafka_code(5), Some(AclResourceType::TransactionalId));
        assert_eq!(AclResourceType::from_kafka_code(7), None, "USER: not served");
        assert_eq!(AclPatternType::from_kafka_code(KAFKA_CODE_MATCH), None, "MATCH is a filter only");
        assert_eq!(AclPermission::Allow.kafka_code(), 3);
        assert_eq!(AclOperation::parse("IDEMPOTENT_WRITE"), Some(AclOperation::IdempotentWrite));
        assert_eq!(AclOperation::parse("describeconfigs"), Some(AclOperation::DescribeConfigs));
        assert_eq!(AclResourceType::parse("transactional-id"), Some(AclResourceType::TransactionalId));
        assert_eq!(AclOperation::parse("CreateTokens"), None);
    }

    /// kafka-acls --list --topic t (Match) shows the wildcard and prefixed
    /// bindings that apply to t; --resource-pattern-type literal only t's.
    #[test]
    fn filters_match_bindings_as_kafka_filters_do() {
        let literal = binding(AclPatternType::Literal, "orders");
        let wildcard = binding(AclPatternType::Literal, "*");
        let prefixed = binding(AclPatternType::Prefixed, "ord");
        let other = binding(AclPatternType::Prefixed, "pay");
        let mut filter = AclFilter { resource_name: Some("orders".into()), ..AclFilter::any() };
        filter.pattern = AclPatternFilter::Match;
        assert!(filter.matches(&literal) && filter.matches(&wildcard) && filter.matches(&prefixed));
        assert!(!filter.matches(&other));
        filter.pattern = AclPatternFilter::Any;
        assert!(filter.matches(&literal) && !filter.matches(&wildcard) && !filter.matches(&prefixed));
        filter.pattern = AclPatternFilter::Exactly(AclPatternType::Prefixed);
        assert!(!filter.matches(&literal));
        filter.resource_name = Some("ord".into());
        assert!(filter.matches(&prefixed));
        assert!(AclFilter::any().matches(&other));
        let deny = AclFilter { permission: Some(AclPermission::Deny), ..AclFilter::any() };
        assert!(!deny.matches(&literal));
        let bob = AclFilter { principal: Some("User:bob".into()), ..AclFilter::any() };
        assert!(!bob.matches(&literal));
    }
}
