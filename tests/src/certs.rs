//! Every certificate a local control plane and spotkube's servers need, generated fresh
//! per rig with rcgen (ECDSA P-256) and written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::RigError;

/// A PEM certificate + key pair on disk (and in memory).
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue server and client certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub files: CertFiles,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("files", &self.files)
            .finish()
    }
}

fn rcgen_err(what: &str, e: rcgen::Error) -> RigError {
    RigError::Certs(format!("{what}: {e}"))
}

fn write_pair(
    dir: &Path,
    name: &str,
    cert_pem: String,
    key_pem: String,
) -> Result<CertFiles, RigError> {
    std::fs::create_dir_all(dir).map_err(|e| RigError::io(dir, e))?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &cert_pem).map_err(|e| RigError::io(&cert, e))?;
    std::fs::write(&key, &key_pem).map_err(|e| RigError::io(&key, e))?;
    Ok(CertFiles {
        cert,
        key,
        cert_pem,
        key_pem,
    })
}

impl Authority {
    /// A new self-signed CA written to `<dir>/<name>.crt|key`.
    pub fn new(dir: &Path, name: &str) -> Result<Self, RigError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| rcgen_err(name, e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|e| rcgen_err(name, e))?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(|e| rcgen_err(name, e))?;
        let files = write_pair(dir, name, issuer.pem(), key_pem)?;
        Ok(Self { issuer, files })
    }

    /// A serving certificate for `names` (DNS names and IP addresses).
    pub fn server(&self, dir: &Path, name: &str, names: &[&str]) -> Result<CertFiles, RigError> {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|e| rcgen_err(name, e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(name));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(dir, name, params)
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from O.
    pub fn client(
        &self,
        dir: &Path,
        name: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertFiles, RigError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| rcgen_err(name, e))?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(dir, name, params)
    }

    fn sign(
        &self,
        dir: &Path,
        name: &str,
        params: CertificateParams,
    ) -> Result<CertFiles, RigError> {
        let key = KeyPair::generate().map_err(|e| rcgen_err(name, e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_err(name, e))?;
        write_pair(dir, name, cert.pem(), key.serialize_pem())
    }
}

/// A bare key pair (the service-account token signing key).
pub fn key_pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), RigError> {
    let key = KeyPair::generate().map_err(|e| rcgen_err(name, e))?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, key.serialize_pem()).map_err(|e| RigError::io(&private, e))?;
    std::fs::write(&public, key.public_key_pem()).map_err(|e| RigError::io(&public, e))?;
    Ok((private, public))
}
