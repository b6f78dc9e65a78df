//! Credentials a request presents: the `authorization` header (a service key, `Bearer` in
//! any case) and the identities of the connection's client certificate.

use crate::transport::connections::Peer;
use tonic::codegen::http;
use tonic::transport::server::TlsConnectInfo;

/// What a request's `authorization` header presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationHeader<'a> {
    /// No `authorization` header: the certificate, if any, decides.
    Nothing,
    /// A `Bearer` credential: the service key, spaces around it removed.
    Key(&'a str),
    /// A header that is not a `Bearer` credential (another scheme, no scheme, bytes that are
    /// not visible ASCII, or several headers): refused, whatever the certificate says,
    /// since a caller that sends a credential means it to count.
    NotAKey,
}

/// The identities (SAN URIs and DNS names) of a DER client certificate. Parsed once per
/// connection (see [`caller_identities`]), not per call.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// The identities of the client certificate of the connection a request came on; none
/// without TLS or without a client certificate. The certificate is parsed on the
/// connection's first call and kept with the connection ([`Peer`]): it cannot change
/// while the connection lasts.
pub(super) fn caller_identities<B>(request: &http::Request<B>) -> &[String] {
    let Some(tls) = request.extensions().get::<TlsConnectInfo<Peer>>() else {
        return &[];
    };
    tls.get_ref().identities(|| {
        tls.peer_certs()
            .and_then(|certs| certs.first().map(|leaf| certificate_identities(leaf)))
            .unwrap_or_default()
    })
}

/// What a request's `authorization` header presents. The scheme is matched
/// case-insensitively (RFC 7235: `Bearer`, `bearer` and `BEARER` are one scheme), followed
/// by at least one space; spaces around the key are ignored.
pub fn presented_key(headers: &http::HeaderMap) -> AuthorizationHeader<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return AuthorizationHeader::Nothing;
    };
    if values.next().is_some() {
        // Two credentials: which one counts would be a guess.
        return AuthorizationHeader::NotAKey;
    }
    match value.to_str().ok().and_then(bearer_credential) {
        Some(key) => AuthorizationHeader::Key(key),
        None => AuthorizationHeader::NotAKey,
    }
}

/// The credential of an `authorization` header value, `Bearer <credential>`: the scheme in
/// any case (RFC 7235), at least one space after it, spaces around the credential removed.
/// `None` for another scheme or no scheme. The one parser of the header, for service keys
/// here and for users' access tokens in [`crate::api::ext_authz`].
pub fn bearer_credential(value: &str) -> Option<&str> {
    const SCHEME: &str = "bearer ";
    match value.split_at_checked(SCHEME.len()) {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case(SCHEME) => {
            Some(credential.trim())
        }
        _ => None,
    }
}
