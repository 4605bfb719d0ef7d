//! The part of rustls-pemfile 2's API that rumqttc 0.25 calls (`certs`, `read_one`, `Item`), on
//! top of the PEM parser in rustls-pki-types. rumqttc calls it only for
//! `TlsConfiguration::Simple`; spyglass hands it a ready rustls configuration instead, so in
//! spyglass this code is linked but not run. It is tested here all the same.

use std::io;

use rustls_pki_types::pem::{self, SectionKind};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, CertificateSigningRequestDer,
    PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer, SubjectPublicKeyInfoDer,
};

/// One section of a PEM file.
#[non_exhaustive]
#[derive(Debug, PartialEq)]
pub enum Item {
    X509Certificate(CertificateDer<'static>),
    SubjectPublicKeyInfo(SubjectPublicKeyInfoDer<'static>),
    Pkcs1Key(PrivatePkcs1KeyDer<'static>),
    Pkcs8Key(PrivatePkcs8KeyDer<'static>),
    Sec1Key(PrivateSec1KeyDer<'static>),
    Crl(CertificateRevocationListDer<'static>),
    Csr(CertificateSigningRequestDer<'static>),
}

fn io_error(e: pem::Error) -> io::Error {
    match e {
        pem::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("{other:?}")),
    }
}

/// The next section of a kind rustls knows, skipping others; `None` at the end of the input.
pub fn read_one(rd: &mut dyn io::BufRead) -> Result<Option<Item>, io::Error> {
    loop {
        let Some((kind, der)) = pem::from_buf(rd).map_err(io_error)? else {
            return Ok(None);
        };
        let item = match kind {
            SectionKind::Certificate => Item::X509Certificate(der.into()),
            SectionKind::PublicKey => Item::SubjectPublicKeyInfo(der.into()),
            SectionKind::RsaPrivateKey => Item::Pkcs1Key(der.into()),
            SectionKind::PrivateKey => Item::Pkcs8Key(der.into()),
            SectionKind::EcPrivateKey => Item::Sec1Key(der.into()),
            SectionKind::Crl => Item::Crl(der.into()),
            SectionKind::Csr => Item::Csr(der.into()),
            _ => continue,
        };
        return Ok(Some(item));
    }
}

/// The certificates in the input, in order; other sections are skipped.
pub fn certs(
    rd: &mut dyn io::BufRead,
) -> impl Iterator<Item = Result<CertificateDer<'static>, io::Error>> + '_ {
    std::iter::from_fn(move || {
        loop {
            match read_one(rd) {
                Ok(Some(Item::X509Certificate(cert))) => return Some(Ok(cert)),
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Not real DER: the PEM layer does not look inside.
    const PEM: &str = "junk before\n\
        -----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
        -----BEGIN EC PRIVATE KEY-----\nBAUG\n-----END EC PRIVATE KEY-----\n\
        -----BEGIN CERTIFICATE-----\nBwgJ\n-----END CERTIFICATE-----\n";

    #[test]
    fn certificates_and_keys_come_out_in_order() {
        let mut rd = io::Cursor::new(PEM.as_bytes());
        let certs: Vec<_> = certs(&mut rd).collect::<Result<_, _>>().unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), &[1, 2, 3]);
        assert_eq!(certs[1].as_ref(), &[7, 8, 9]);
        let mut rd = io::Cursor::new(PEM.as_bytes());
        assert!(matches!(read_one(&mut rd), Ok(Some(Item::X509Certificate(_)))));
        match read_one(&mut rd) {
            Ok(Some(Item::Sec1Key(key))) => assert_eq!(key.secret_sec1_der(), &[4, 5, 6]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_base64_is_an_error() {
        let bad = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(read_one(&mut io::Cursor::new(bad.as_bytes())).is_err());
    }
}
