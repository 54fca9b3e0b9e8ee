//! Targets as users write them: `host:port`, `[v6]:port`, or `http://host[:port][/path]`.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::BenchError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As written.
    pub input: String,
    /// `host:port` as written (the HTTP Host header).
    pub authority: String,
    /// The first address the name resolved to (see `addrs`).
    pub addr: SocketAddr,
    /// Every address the name resolved to, in resolver order.
    pub addrs: Vec<SocketAddr>,
    /// The path of an `http://` URL.
    pub path: Option<String>,
    /// Written as an `http://` URL.
    pub is_url: bool,
}

impl Target {
    pub fn parse(input: &str) -> Result<Self, BenchError> {
        let bad = |reason: &str| BenchError::BadTarget {
            target: input.to_string(),
            reason: reason.to_string(),
        };
        let (rest, is_url) = if let Some(r) = input.strip_prefix("http://") {
            (r, true)
        } else if input.starts_with("https://") {
            return Err(bad(
                "TLS targets are not supported yet (plain TCP and HTTP only)",
            ));
        } else if input.contains("://") {
            return Err(bad("only http:// URLs or host:port are understood"));
        } else {
            (input, false)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) if is_url => (&rest[..i], Some(rest[i..].to_string())),
            Some(_) => return Err(bad("a path needs an http:// URL")),
            None => (rest, is_url.then(|| "/".to_string())),
        };
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let with_port = if has_port {
            authority.to_string()
        } else if is_url {
            format!("{authority}:80")
        } else {
            return Err(bad("missing :port"));
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|source| BenchError::Resolve {
                target: input.to_string(),
                source,
            })?
            .collect();
        let addr = *addrs
            .first()
            .ok_or_else(|| bad("the name resolved to no address"))?;
        Ok(Self {
            input: input.to_string(),
            authority: authority.to_string(),
            addr,
            addrs,
            path,
            is_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let t = Target::parse("127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, None);
        let t = Target::parse("http://127.0.0.1:81/a/b?c=1").unwrap();
        assert_eq!(t.path.as_deref(), Some("/a/b?c=1"));
        assert_eq!(t.authority, "127.0.0.1:81");
        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path.as_deref(), Some("/"));
        let t = Target::parse("[::1]:9").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
    }

    #[test]
    fn rejects() {
        for bad in [
            "127.0.0.1",
            "https://127.0.0.1:443/",
            "ftp://x:1",
            "127.0.0.1:80/x",
            ":80",
            "127.0.0.1:notaport",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
