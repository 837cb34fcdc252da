//! Certificates for the TLS tests, made by a throwaway CA in each test
//! (rcgen), and kcat, the client we did not write that the TLS and SASL
//! tests talk through.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A throwaway certificate authority.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// (certificate PEM, private key PEM) for `common_name`, valid for the
    /// host `names` (none for a client), as a server or a client.
    pub fn issue_for(&self, common_name: &str, names: &[&str], client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    }

    /// A server certificate for the loopback names that expired in 2021.
    pub fn issue_expired(&self, common_name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    }

    /// As `issue_for`, valid for the loopback names.
    pub fn issue(&self, common_name: &str, client: bool) -> (String, String) {
        self.issue_for(common_name, &["localhost", "127.0.0.1"], client)
    }

    /// Writes `ca.pem` and a broker keystore `broker.pem` (chain and key in
    /// one PEM file, KIP-651) for the host `names` into `dir`; returns
    /// their paths.
    pub fn write_broker_stores(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        // A broker's certificate serves both ends: its listeners, and its
        // connections to other brokers (mutual TLS on the controller port).
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "broker-1");
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let (cert, key) = (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem());
        let (ca_file, keystore) = (dir.join("ca.pem"), dir.join("broker.pem"));
        std::fs::write(&ca_file, &self.pem).unwrap();
        std::fs::write(&keystore, format!("{cert}{key}")).unwrap();
        (ca_file, keystore)
    }
}

/// Runs kcat against 127.0.0.1:`port` with `-X` settings and `args`,
/// feeding `input`.
pub fn kcat(port: u16, settings: &[(&str, &str)], args: &[&str], input: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = Command::new("kcat");
    command.arg("-b").arg(format!("127.0.0.1:{port}"));
    for (key, value) in settings {
        command.arg("-X").arg(format!("{key}={value}"));
    }
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("kcat (installed by compat/install.sh)");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// What a process printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
