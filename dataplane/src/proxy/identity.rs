//! The gateway's TLS material for the engine: [`MeshTls`] over a [`CertWatch`], with
//! configurations built once per certificate generation (client configs shared so repeat
//! connections resume; server configs per identity).

use crate::certwatch::{CertWatch, MeshCerts};
use control::snapshot::IdentityRt;
use mesh::engine::MeshTls;
use mesh::tls::{self, ClientConfigs};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct MeshIdentity {
    watch: Arc<CertWatch>,
    clients: ClientConfigs,
    /// (generation, identity) → server config.
    servers: ServerCache,
    /// The same for `ingress-tls` listeners.
    ingress: ServerCache,
}

type ServerCache = Mutex<(u64, HashMap<String, Arc<rustls::ServerConfig>>)>;

impl MeshIdentity {
    pub fn new(watch: Arc<CertWatch>) -> Self {
        MeshIdentity {
            watch,
            clients: ClientConfigs::new(),
            servers: Mutex::new((0, HashMap::new())),
            ingress: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn watch(&self) -> &Arc<CertWatch> {
        &self.watch
    }

    /// `identity`'s server config from `cache`, built by `make` once per certificate
    /// generation.
    fn cached(
        &self,
        cache: &ServerCache,
        identity: &IdentityRt,
        make: impl FnOnce(&IdentityRt, &MeshCerts) -> Option<Arc<rustls::ServerConfig>>,
    ) -> Option<Arc<rustls::ServerConfig>> {
        let certs = self.watch.current();
        let mut m = cache.lock().unwrap_or_else(|e| e.into_inner());
        if m.0 != certs.generation {
            *m = (certs.generation, HashMap::new());
        }
        if let Some(c) = m.1.get(&identity.id) {
            return Some(c.clone());
        }
        // Reloaded files win; an identity the watch has not taken up yet (tables just
        // published) uses the material control checked for the tables.
        let material = certs.identity(&identity.id).unwrap_or(identity);
        let c = make(material, &certs)?;
        m.1.insert(identity.id.clone(), c.clone());
        Some(c)
    }
}

impl MeshTls for MeshIdentity {
    fn server(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        self.cached(&self.servers, identity, |material, certs| {
            tls::server_config(material, &certs.trust).ok()
        })
    }

    fn ingress(&self, identity: &IdentityRt) -> Option<Arc<rustls::ServerConfig>> {
        self.cached(&self.ingress, identity, |material, _| {
            tls::ingress_server_config(material).ok()
        })
    }

    fn generation(&self) -> u64 {
        self.watch.current().generation
    }

    fn client(
        &self,
        identity: &IdentityRt,
        peer_identity: &str,
    ) -> Option<Arc<rustls::ClientConfig>> {
        let certs = self.watch.current();
        let material = certs.identity(&identity.id).unwrap_or(identity);
        self.clients
            .get(certs.generation, material, &certs.trust, peer_identity)
            .ok()
    }
}
