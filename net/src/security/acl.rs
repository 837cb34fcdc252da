//! Kafka's authorizer: whether a principal, from a host, may do an
//! operation on a resource, by the ACLs in the metadata image
//! (`spate_replication::acl`) and the broker's `super.users` and
//! `allow.everyone.if.no.acl.found`.
//!
//! Kafka's rules: a super user may do anything; a resource no ACL applies
//! to is open to everyone when `allow.everyone.if.no.acl.found` holds,
//! else closed; otherwise a matching Deny wins over any Allow; `All` covers
//! every operation; an Allow of Read, Write, Delete or Alter also allows
//! Describe, one of AlterConfigs also DescribeConfigs. An ACL applies to
//! a resource by a literal name (`*`: all of its type) or a prefix of it,
//! to a principal by its name or `User:*`, to a host by its ip or `*`.
//!
//! The front-ends ask through `Decisions`, one per connection, which
//! remembers each answer until the ACLs change (the image's
//! `acls_version`): a produce then costs a hash lookup per topic, not a
//! scan of the ACLs per batch.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use spate_replication::acl::{
    AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType, WILDCARD_HOST, WILDCARD_PRINCIPAL,
    WILDCARD_RESOURCE,
};

use super::Principal;
use crate::config::{BrokerConfig, ConfigError};
use crate::limits::{ACL_DECISION_OVERHEAD_BYTES, ACL_DECISIONS_BYTES_MAX};

/// What the broker's configuration says about authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPolicy {
    /// `super.users`: principals no ACL restricts.
    pub super_users: Vec<Principal>,
    /// `allow.everyone.if.no.acl.found`, with its default resolved.
    pub allow_if_no_acl: bool,
}

impl AclPolicy {
    /// The policy `config` sets. `allow.everyone.if.no.acl.found` defaults
    /// to true while no listener authenticates its clients (so a broker
    /// with no configuration serves everyone, as before ACLs), to false
    /// once one does (Kafka operators turn on authentication to close
    /// what ACLs do not open).
    pub fn from_config(config: &BrokerConfig) -> Result<AclPolicy, ConfigError> {
        let super_users = config
            .super_users
            .split(';')
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| Principal::parse(text).map_err(|err| ConfigError(format!("super_users (super.users): {err}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_if_no_acl =
            config.allow_everyone_if_no_acl_found.unwrap_or_else(|| !any_listener_authenticates(config));
        Ok(AclPolicy { super_users, allow_if_no_acl })
    }
}

/// Whether a Kafka listener of `config` authenticates its clients (by its
/// protocol, whatever its name: `EXTERNAL` mapped to SASL_SSL counts).
fn any_listener_authenticates(config: &BrokerConfig) -> bool {
    config.kafka_listeners().is_ok_and(|listeners| listeners.iter().any(|l| config.authenticates(l)))
}

/// The resource name `authorize_any` asks about first: Kafka's own
/// (`Authorizer.authorizeByResourceType`), so the same ACLs open it.
const PROBE_RESOURCE_NAME: &str = "hardcode";

/// Bindings by resource name.
type ByName = HashMap<String, Vec<AclBinding>>;

/// The ACLs of one image, indexed for lookups by resource: a check costs
/// a few hash lookups (the name, `*`, and each length of prefix some
/// prefixed ACL has), whatever the number of ACLs.
#[derive(Debug, Default)]
pub struct Authorizer {
    /// The image's `acls_version`: decisions cached under another are stale.
    version: u64,
    /// Literal bindings by resource type, then name (`*` included).
    literal: HashMap<AclResourceType, ByName>,
    /// Prefixed bindings by resource type, then prefix.
    prefixed: HashMap<AclResourceType, ByName>,
    /// Per resource type, the lengths of its prefixes: the prefixes of a
    /// name worth looking up.
    prefix_lengths: HashMap<AclResourceType, BTreeSet<usize>>,
    all: Arc<BTreeSet<AclBinding>>,
}

impl Authorizer {
    pub fn new(acls: &BTreeSet<AclBinding>, version: u64) -> Authorizer {
        let mut authorizer = Authorizer { version, all: Arc::new(acls.clone()), ..Authorizer::default() };
        for acl in acls.iter() {
            let index = match acl.pattern_type {
                AclPatternType::Literal => &mut authorizer.literal,
                AclPatternType::Prefixed => {
                    authorizer.prefix_lengths.entry(acl.resource_type).or_default().insert(acl.resource_name.len());
                    &mut authorizer.prefixed
                }
            };
            index.entry(acl.resource_type).or_default().entry(acl.resource_name.clone()).or_default().push(acl.clone());
        }
        authorizer
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every binding, in order.
    pub fn acls(&self) -> &BTreeSet<AclBinding> {
        &self.all
    }

    /// The bindings that apply to one resource: literal ones of its name
    /// or `*`, prefixed ones whose prefix starts its name.
    fn applying<'a>(&'a self, resource_type: AclResourceType, name: &'a str) -> impl Iterator<Item = &'a AclBinding> {
        let literal = self.literal.get(&resource_type);
        let exact = literal.and_then(|names| names.get(name)).into_iter().flatten();
        let wildcard = literal.and_then(|names| names.get(WILDCARD_RESOURCE)).into_iter().flatten();
        let prefixed = self.prefixed.get(&resource_type);
        let lengths = self.prefix_lengths.get(&resource_type).into_iter().flatten();
        let prefixes = lengths
            .take_while(move |&&length| length <= name.len())
            .filter_map(move |&length| name.get(..length))
            .filter_map(move |prefix| prefixed.and_then(|names| names.get(prefix)))
            .flatten();
        exact.chain(wildcard).chain(prefixes)
    }

    /// Kafka's decision for one operation on one resource (`who`'s
    /// super-user status is the caller's, from the policy).
    pub fn authorize(
        &self,
        policy: &AclPolicy,
        who: &Who,
        op: AclOperation,
        resource: (AclResourceType, &str),
    ) -> bool {
        if who.is_super {
            return true;
        }
        let mut any = false;
        let mut allowed = false;
        for acl in self.applying(resource.0, resource.1) {
            any = true;
            if !who.matches(acl) {
                continue;
            }
            match acl.permission {
                AclPermission::Deny if acl.operation == op || acl.operation == AclOperation::All => return false,
                AclPermission::Deny => {}
                AclPermission::Allow => allowed |= implies(acl.operation, op),
            }
        }
        if !any {
            return policy.allow_if_no_acl;
        }
        allowed
    }

    /// Kafka's `authorizeByResourceType`: whether `who` may do `op` on
    /// some resource of a type (InitProducerId asks whether a producer
    /// may write to any topic). As in Kafka, a resource of a made-up name
    /// is asked first (so `allow.everyone.if.no.acl.found` opens it while
    /// no ACL covers that name, whatever other resources have); then an
    /// Allow on a pattern counts unless a Deny for `who` covers it (a
    /// literal `*`, the same literal, or a prefix of the allowed name).
    pub fn authorize_any(
        &self,
        policy: &AclPolicy,
        who: &Who,
        op: AclOperation,
        resource_type: AclResourceType,
    ) -> bool {
        if who.is_super || self.authorize(policy, who, op, (resource_type, PROBE_RESOURCE_NAME)) {
            return true;
        }
        let of_type = || self.all.iter().filter(|acl| acl.resource_type == resource_type);
        let denies: Vec<&AclBinding> = of_type()
            .filter(|acl| {
                acl.permission == AclPermission::Deny
                    && who.matches(acl)
                    && (acl.operation == op || acl.operation == AclOperation::All)
            })
            .collect();
        let denied = |allow: &AclBinding| {
            denies.iter().any(|deny| match deny.pattern_type {
                AclPatternType::Literal => {
                    deny.resource_name == WILDCARD_RESOURCE
                        || (allow.pattern_type == AclPatternType::Literal && deny.resource_name == allow.resource_name)
                }
                AclPatternType::Prefixed => allow.resource_name.starts_with(deny.resource_name.as_str()),
            })
        };
        of_type().any(|acl| {
            acl.permission == AclPermission::Allow && who.matches(acl) && implies(acl.operation, op) && !denied(acl)
        })
    }
}

/// Whether an Allow of `granted` allows `asked`.
fn implies(granted: AclOperation, asked: AclOperation) -> bool {
    use AclOperation::*;
    granted == asked
        || granted == All
        || (asked == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (asked == DescribeConfigs && granted == AlterConfigs)
}

/// Who asks: a principal from a host, as ACLs name them.
#[derive(Debug, Clone)]
pub struct Who {
    /// `Type:name`.
    pub principal: String,
    /// The bare ip.
    pub host: String,
    pub is_super: bool,
}

impl Who {
    pub fn new(principal: &Principal, host: &str, policy: &AclPolicy) -> Who {
        Who {
            principal: principal.to_string(),
            host: host.trim_start_matches('/').to_string(),
            is_super: policy.super_users.contains(principal),
        }
    }

    fn matches(&self, acl: &AclBinding) -> bool {
        (acl.principal == self.principal || acl.principal == WILDCARD_PRINCIPAL)
            && (acl.host == self.host || acl.host == WILDCARD_HOST)
    }
}

/// Decisions by operation and resource type, then resource name (looked
/// up by `&str`, without building a key).
type DecisionCache = HashMap<(AclOperation, AclResourceType), HashMap<Box<str>, bool>>;

/// One connection's authorization decisions, kept until the ACLs change
/// or the connection's principal does (SASL re-authentication).
#[derive(Debug, Default)]
pub struct Decisions {
    who: RefCell<Option<(Rc<Principal>, Rc<Who>)>>,
    policy: RefCell<Option<Rc<AclPolicy>>>,
    version: Cell<u64>,
    cache: RefCell<DecisionCache>,
    /// What `cache` holds, as `ACL_DECISIONS_BYTES_MAX` counts it.
    cached_bytes: Cell<usize>,
}

impl Decisions {
    /// Whether `principal` from `host` may do `op` on `resource`, from the
    /// cache or, the first time, from `authorizer`.
    pub fn allowed(
        &self,
        authorizer: &Authorizer,
        config: &BrokerConfig,
        principal: &Rc<Principal>,
        host: &str,
        op: AclOperation,
        resource: (AclResourceType, &str),
    ) -> bool {
        self.refresh(authorizer, config, principal, host);
        if let Some(&decision) = self.cache.borrow().get(&(op, resource.0)).and_then(|names| names.get(resource.1)) {
            return decision;
        }
        let (policy, who) = self.current();
        let decision = authorizer.authorize(&policy, &who, op, resource);
        let entry_bytes = resource.1.len() + ACL_DECISION_OVERHEAD_BYTES;
        if self.cached_bytes.get() + entry_bytes > ACL_DECISIONS_BYTES_MAX {
            // A client naming ever new resources is bounded here; forgetting
            // costs it lookups, never a wrong answer.
            self.cache.borrow_mut().clear();
            self.cached_bytes.set(0);
        }
        self.cache.borrow_mut().entry((op, resource.0)).or_default().insert(resource.1.into(), decision);
        self.cached_bytes.set(self.cached_bytes.get() + entry_bytes);
        decision
    }

    /// `Authorizer::authorize_any` for this connection (not cached: it
    /// serves InitProducerId, once per producer).
    pub fn allowed_any(
        &self,
        authorizer: &Authorizer,
        config: &BrokerConfig,
        principal: &Rc<Principal>,
        host: &str,
        op: AclOperation,
        resource_type: AclResourceType,
    ) -> bool {
        self.refresh(authorizer, config, principal, host);
        let (policy, who) = self.current();
        authorizer.authorize_any(&policy, &who, op, resource_type)
    }

    fn current(&self) -> (Rc<AclPolicy>, Rc<Who>) {
        let policy = self.policy.borrow().clone().unwrap_or_default();
        let who = self.who.borrow().as_ref().map(|(_, who)| who.clone());
        (policy, who.unwrap_or_else(|| Rc::new(Who::new(&Principal::anonymous(), "", &AclPolicy::default()))))
    }

    /// Drops what is stale: decisions made under other ACLs or for another
    /// principal.
    fn refresh(&self, authorizer: &Authorizer, config: &BrokerConfig, principal: &Rc<Principal>, host: &str) {
        if self.policy.borrow().is_none() {
            // `security::check_config` refused a bad policy at start; the
            // fallback (no super users, nothing open) is never reached.
            let policy = AclPolicy::from_config(config).unwrap_or_default();
            *self.policy.borrow_mut() = Some(Rc::new(policy));
        }
        let same_principal = self.who.borrow().as_ref().is_some_and(|(known, _)| Rc::ptr_eq(known, principal));
        if !same_principal {
            let policy = self.policy.borrow().clone().unwrap_or_default();
            *self.who.borrow_mut() = Some((principal.clone(), Rc::new(Who::new(principal, host, &policy))));
            self.clear(authorizer.version());
        } else if self.version.get() != authorizer.version() {
            self.clear(authorizer.version());
        }
    }

    fn clear(&self, version: u64) {
        self.cache.borrow_mut().clear();
        self.cached_bytes.set(0);
        self.version.set(version);
    }
}

impl Default for AclPolicy {
    /// Nothing open, nobody super: what a policy that cannot be read means.
    fn default() -> Self {
        AclPolicy { super_users: Vec::new(), allow_if_no_acl: false }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use AclOperation::*;

    fn acl(
        resource: (AclResourceType, &str),
        pattern_type: AclPatternType,
        principal: &str,
        host: &str,
        operation: AclOperation,
        permission: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type: resource.0,
            resource_name: resource.1.into(),
            pattern_type,
            principal: principal.into(),
            host: host.into(),
            operation,
            permission,
        }
    }

    fn topic(name: &str) -> (AclResourceType, &str) {
        (AclResourceType::Topic, name)
    }

    fn closed() -> AclPolicy {
        AclPolicy { super_users: vec![Principal::user("admin")], allow_if_no_acl: false }
    }

    fn who(name: &str, policy: &AclPolicy) -> Who {
        Who::new(&Principal::user(name), "/10.0.0.1", policy)
    }

    fn authorizer(acls: Vec<AclBinding>) -> Authorizer {
        Authorizer::new(&acls.into_iter().collect(), 1)
    }

    #[test]
    fn deny_wins_over_allow() {
        use AclPatternType::*;
        let auth = authorizer(vec![
            acl(topic("*"), Literal, "User:*", "*", All, AclPermission::Allow),
            acl(topic("orders"), Literal, "User:alice", "*", Write, AclPermission::Deny),
        ]);
        let policy = closed();
        let alice = who("alice", &policy);
        assert!(!auth.authorize(&policy, &alice, Write, topic("orders")));
        assert!(auth.authorize(&policy, &alice, Read, topic("orders")), "the deny names Write only");
        assert!(auth.authorize(&policy, &who("bob", &policy), Write, topic("orders")));
        let all_denied = authorizer(vec![
            acl(topic("orders"), Literal, "User:alice", "*", Read, AclPermission::Allow),
            acl(topic("orders"), Literal, "User:*", "*", All, AclPermission::Deny),
        ]);
        assert!(!all_denied.authorize(&policy, &alice, Read, topic("orders")), "a Deny of All denies Read");
    }

    #[test]
    fn prefixed_and_wildcard_patterns_apply_to_names() {
        use AclPatternType::*;
        let auth = authorizer(vec![
            acl(topic("pay."), Prefixed, "User:alice", "*", Read, AclPermission::Allow),
            acl((AclResourceType::Group, "*"), Literal, "User:alice", "10.0.0.1", Read, AclPermission::Allow),
        ]);
        let policy = closed();
        let alice = who("alice", &policy);
        assert!(auth.authorize(&policy, &alice, Read, topic("pay.eu")));
        assert!(!auth.authorize(&policy, &alice, Read, topic("payroll")));
        assert!(!auth.authorize(&policy, &alice, Read, topic("pay")));
        assert!(auth.authorize(&policy, &alice, Read, (AclResourceType::Group, "any-group")));
        let elsewhere = Who::new(&Principal::user("alice"), "/10.0.0.2", &policy);
        assert!(!auth.authorize(&policy, &elsewhere, Read, (AclResourceType::Group, "g")), "another host");
        assert!(!auth.authorize(&policy, &alice, Read, (AclResourceType::TransactionalId, "g")), "another type");
    }

    /// The prefix index finds every prefixed ACL starting a name, of any
    /// length, and none that merely shares its first bytes.
    #[test]
    fn prefixes_of_every_length_apply() {
        use AclPatternType::*;
        let auth = authorizer(vec![
            acl(topic("a"), Prefixed, "User:alice", "*", Read, AclPermission::Allow),
            acl(topic("ab"), Prefixed, "User:alice", "*", Write, AclPermission::Allow),
            acl(topic("abc-long"), Prefixed, "User:alice", "*", Delete, AclPermission::Allow),
            acl(topic("pay.€"), Prefixed, "User:alice", "*", Alter, AclPermission::Allow),
            acl((AclResourceType::Group, "ab"), Prefixed, "User:alice", "*", Delete, AclPermission::Allow),
        ]);
        let applying = |name: &str| {
            let mut ops: Vec<AclOperation> =
                auth.applying(AclResourceType::Topic, name).map(|acl| acl.operation).collect();
            ops.sort();
            ops
        };
        assert_eq!(applying("abx"), [Read, Write]);
        assert_eq!(applying("ab"), [Read, Write]);
        assert_eq!(applying("abc-longer"), [Read, Write, Delete]);
        assert_eq!(applying("abc-lon"), [Read, Write]);
        assert_eq!(applying("b"), []);
        assert_eq!(applying("pay.€uro"), [Alter]);
        assert_eq!(applying("pay.x"), []);
        // Byte 7 of this name falls inside its "€": no prefix of 7 bytes.
        assert_eq!(applying("pay.ab€"), []);
    }

    #[test]
    fn read_write_delete_alter_imply_describe_and_alter_configs_implies_describe_configs() {
        use AclPatternType::*;
        for granted in [Read, Write, Delete, Alter] {
            let auth = authorizer(vec![acl(topic("t"), Literal, "User:alice", "*", granted, AclPermission::Allow)]);
            let policy = closed();
            assert!(auth.authorize(&policy, &who("alice", &policy), Describe, topic("t")), "{granted:?}");
            assert!(!auth.authorize(&policy, &who("alice", &policy), Create, topic("t")), "{granted:?}");
        }
        let auth = authorizer(vec![acl(topic("t"), Literal, "User:alice", "*", AlterConfigs, AclPermission::Allow)]);
        let policy = closed();
        assert!(auth.authorize(&policy, &who("alice", &policy), DescribeConfigs, topic("t")));
        assert!(!auth.authorize(&policy, &who("alice", &policy), Describe, topic("t")));
        // Implication opens, never closes: a Deny of Read leaves Describe.
        let auth = authorizer(vec![
            acl(topic("t"), Literal, "User:alice", "*", Describe, AclPermission::Allow),
            acl(topic("t"), Literal, "User:alice", "*", Read, AclPermission::Deny),
        ]);
        assert!(auth.authorize(&policy, &who("alice", &policy), Describe, topic("t")));
    }

    #[test]
    fn super_users_skip_checks_and_no_acl_means_the_policy() {
        use AclPatternType::*;
        let auth = authorizer(vec![acl(topic("t"), Literal, "User:*", "*", All, AclPermission::Deny)]);
        let policy = closed();
        assert!(auth.authorize(&policy, &who("admin", &policy), Write, topic("t")), "a super user");
        assert!(!auth.authorize(&policy, &who("alice", &policy), Write, topic("other")), "no ACL, closed");
        let open = AclPolicy { allow_if_no_acl: true, ..closed() };
        assert!(auth.authorize(&open, &who("alice", &open), Write, topic("other")), "no ACL, open");
        assert!(!auth.authorize(&open, &who("alice", &open), Write, topic("t")), "an ACL applies: no longer open");
    }

    #[test]
    fn any_resource_of_a_type_is_allowed_unless_denied_over_it() {
        use AclPatternType::*;
        let policy = closed();
        let alice = who("alice", &policy);
        let auth = authorizer(vec![acl(topic("t"), Literal, "User:alice", "*", Write, AclPermission::Allow)]);
        assert!(auth.authorize_any(&policy, &alice, Write, AclResourceType::Topic));
        assert!(!auth.authorize_any(&policy, &alice, Write, AclResourceType::Group));
        let auth = authorizer(vec![
            acl(topic("pay.eu"), Literal, "User:alice", "*", Write, AclPermission::Allow),
            acl(topic("pay."), Prefixed, "User:alice", "*", Write, AclPermission::Deny),
        ]);
        assert!(!auth.authorize_any(&policy, &alice, Write, AclResourceType::Topic));
        let open = AclPolicy { allow_if_no_acl: true, ..closed() };
        assert!(authorizer(vec![]).authorize_any(&open, &who("alice", &open), Write, AclResourceType::Topic));
        // Open while no ACL covers Kafka's probe name, whatever other
        // topics have: a deny on one topic must not stop every idempotent
        // producer of a zero-config broker (it did, before the probe).
        let one_denied = authorizer(vec![acl(topic("secret"), Literal, "User:*", "*", All, AclPermission::Deny)]);
        assert!(one_denied.authorize_any(&open, &who("alice", &open), Write, AclResourceType::Topic));
        assert!(!one_denied.authorize_any(&closed(), &who("alice", &closed()), Write, AclResourceType::Topic));
        let everything_denied = authorizer(vec![acl(topic("*"), Literal, "User:*", "*", Write, AclPermission::Deny)]);
        assert!(!everything_denied.authorize_any(&open, &who("alice", &open), Write, AclResourceType::Topic));
    }

    /// A connection asks once per resource until the ACLs change.
    #[test]
    fn decisions_are_cached_until_the_acls_change() {
        use AclPatternType::*;
        let config = BrokerConfig { allow_everyone_if_no_acl_found: Some(true), ..BrokerConfig::default() };
        let anonymous = Rc::new(Principal::anonymous());
        let decisions = Decisions::default();
        let open = Authorizer::new(&BTreeSet::new(), 0);
        assert!(decisions.allowed(&open, &config, &anonymous, "/127.0.0.1", Write, topic("t")));
        let denying = [acl(topic("t"), Literal, "User:ANONYMOUS", "127.0.0.1", Write, AclPermission::Deny)];
        // The same version: the cached answer stands (the authorizer is
        // not asked).
        let same_version = Authorizer::new(&denying.iter().cloned().collect(), 0);
        assert!(decisions.allowed(&same_version, &config, &anonymous, "/127.0.0.1", Write, topic("t")));
        let changed = Authorizer::new(&denying.iter().cloned().collect(), 1);
        assert!(!decisions.allowed(&changed, &config, &anonymous, "/127.0.0.1", Write, topic("t")));
        assert!(decisions.allowed(&changed, &config, &anonymous, "/127.0.0.1", Write, topic("u")));
    }

    /// A client naming ever new topics cannot grow its connection's cache
    /// past its bound (each answer stays right).
    #[test]
    fn a_connection_caches_a_bounded_number_of_decisions() {
        let config = BrokerConfig { allow_everyone_if_no_acl_found: Some(true), ..BrokerConfig::default() };
        let anonymous = Rc::new(Principal::anonymous());
        let decisions = Decisions::default();
        let auth =
            authorizer(vec![acl(topic("t-7"), AclPatternType::Literal, "User:*", "*", Write, AclPermission::Deny)]);
        for i in 0..10_000 {
            let name = format!("t-{i}");
            let allowed = decisions.allowed(&auth, &config, &anonymous, "/127.0.0.1", Write, topic(&name));
            assert_eq!(allowed, i != 7, "{name}");
            assert!(decisions.cached_bytes.get() <= ACL_DECISIONS_BYTES_MAX);
        }
        let held: usize = decisions.cache.borrow().values().map(|names| names.len()).sum();
        assert!(held < 10_000 && held * ACL_DECISION_OVERHEAD_BYTES <= ACL_DECISIONS_BYTES_MAX, "{held}");
    }

    #[test]
    fn the_policy_defaults_to_open_until_a_listener_authenticates() {
        let plain = BrokerConfig::default();
        assert!(AclPolicy::from_config(&plain).unwrap().allow_if_no_acl);
        let sasl = BrokerConfig { listeners: "SASL_SSL://0.0.0.0:9093".into(), ..BrokerConfig::default() };
        assert!(!AclPolicy::from_config(&sasl).unwrap().allow_if_no_acl);
        let mtls = BrokerConfig {
            listeners: "PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093".into(),
            ssl_client_auth: "required".into(),
            ..BrokerConfig::default()
        };
        assert!(!AclPolicy::from_config(&mtls).unwrap().allow_if_no_acl);
        // A listener named by the operator counts by the protocol it maps to.
        let named = BrokerConfig {
            listeners: "PLAINTEXT://127.0.0.1:9092,EXTERNAL://0.0.0.0:9094".into(),
            listener_security_protocol_map: "EXTERNAL:SASL_SSL".into(),
            ..BrokerConfig::default()
        };
        assert!(!AclPolicy::from_config(&named).unwrap().allow_if_no_acl);
        let explicit = BrokerConfig { allow_everyone_if_no_acl_found: Some(true), ..sasl };
        assert!(AclPolicy::from_config(&explicit).unwrap().allow_if_no_acl);
        let supers = BrokerConfig { super_users: "User:a; User:CN=b,O=x".into(), ..BrokerConfig::default() };
        let policy = AclPolicy::from_config(&supers).unwrap();
        assert_eq!(policy.super_users, [Principal::user("a"), Principal::user("CN=b,O=x")]);
        let bad = BrokerConfig { super_users: "alice".into(), ..BrokerConfig::default() };
        assert!(AclPolicy::from_config(&bad).is_err());
    }
}
