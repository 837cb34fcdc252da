//! Kafka's principal: a type and a name, written `User:alice`. The
//! unauthenticated principal is `User:ANONYMOUS`, as in Kafka, so ACLs and
//! `super.users` can name it.

use std::fmt;

/// Kafka's only built-in principal type.
pub const USER_TYPE: &str = "User";
/// The name of the principal of a connection that did not authenticate.
pub const ANONYMOUS_NAME: &str = "ANONYMOUS";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub principal_type: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("principal {text:?}: expected Type:name (for example User:alice)")]
pub struct PrincipalError {
    pub text: String,
}

impl Principal {
    pub fn user(name: impl Into<String>) -> Principal {
        Principal { principal_type: USER_TYPE.into(), name: name.into() }
    }

    pub fn anonymous() -> Principal {
        Principal::user(ANONYMOUS_NAME)
    }

    pub fn is_anonymous(&self) -> bool {
        self.principal_type == USER_TYPE && self.name == ANONYMOUS_NAME
    }

    /// `Type:name` as Kafka writes it (in ACLs, `super.users`). The name
    /// may itself hold colons (a certificate's subject); the type may not.
    pub fn parse(text: &str) -> Result<Principal, PrincipalError> {
        let bad = || PrincipalError { text: text.into() };
        let (principal_type, name) = text.split_once(':').ok_or_else(bad)?;
        if principal_type.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(Principal { principal_type: principal_type.into(), name: name.into() })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.principal_type, self.name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn principals_parse_and_print_as_kafka_writes_them() {
        let alice = Principal::parse("User:alice").unwrap();
        assert_eq!(alice, Principal::user("alice"));
        assert_eq!(alice.to_string(), "User:alice");
        let subject = Principal::parse("User:CN=broker-1,O=spate:x").unwrap();
        assert_eq!(subject.name, "CN=broker-1,O=spate:x");
        assert!(Principal::parse("alice").is_err());
        assert!(Principal::parse(":alice").is_err());
        assert!(Principal::parse("User:").is_err());
        assert!(Principal::anonymous().is_anonymous());
    }
}
