//! The mesh certificates on disk: reading trust roots and identities from PEM files,
//! reloading them when they change, and their expiry. The configurations built from them
//! are `mesh::tls`'s; this is the file and wall-clock side of it.
//!
//! What the control thread does with it: [`CertWatch::poll`] once a second,
//! [`CertWatch::set_identities`] when a new snapshot is published,
//! [`CertWatch::expiry_metrics`] and [`CertWatch::warnings`]. New connections take
//! configurations built from [`CertWatch::current`] (see `proxy::identity`); existing
//! connections keep theirs.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use control::snapshot::IdentityRt;
use mesh::tls::{self, parse_cert, spiffe_of, unix_now, validity, MeshTrust, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The trusted mesh roots from PEM files: every certificate in every file is a root.
pub fn trust_from_pem_files(paths: &[PathBuf]) -> Result<MeshTrust, TlsError> {
    let mut certs = Vec::new();
    for path in paths {
        certs.extend(read_pem_certs(path)?);
    }
    MeshTrust::from_der(certs)
}

/// One identity as currently loaded (certificate and key as in the files, or as in the
/// snapshot when the files could not be used).
#[derive(Debug, Clone)]
pub struct LoadedIdentity {
    pub identity: IdentityRt,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// What new connections use, published whole by [`CertWatch`]. Build configurations from
/// it; rebuild them when [`MeshCerts::generation`] grows.
#[derive(Debug)]
pub struct MeshCerts {
    pub generation: u64,
    pub trust: MeshTrust,
    pub identities: Vec<LoadedIdentity>,
}

impl MeshCerts {
    pub fn identity(&self, spiffe_id: &str) -> Option<&IdentityRt> {
        self.identities
            .iter()
            .map(|l| &l.identity)
            .find(|i| i.id == spiffe_id)
    }
}

/// What a file looked like: a rename over it changes the inode, a rewrite in place the
/// size or the times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileSig {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Change tracking for a group of files reloaded together.
#[derive(Debug, Default)]
struct Tracked {
    paths: Vec<PathBuf>,
    loaded: Vec<Option<FileSig>>,
    /// Seen changed on the last poll; reloaded once it is seen unchanged again.
    pending: Option<Vec<Option<FileSig>>>,
    /// A reload of exactly these files failed; not retried until they change.
    failed: Option<Vec<Option<FileSig>>>,
    error: Option<String>,
}

impl Tracked {
    fn new(paths: Vec<PathBuf>) -> Self {
        let loaded = paths.iter().map(|p| file_sig(p)).collect();
        Self {
            paths,
            loaded,
            ..Self::default()
        }
    }

    fn sigs(&self) -> Vec<Option<FileSig>> {
        self.paths.iter().map(|p| file_sig(p)).collect()
    }

    /// The files' state if they should be reloaded now. Debounced: the files must look
    /// the same on two polls in a row, so a cert and key replaced one after the other
    /// are read together.
    fn due(&mut self) -> Option<Vec<Option<FileSig>>> {
        let now = self.sigs();
        if now == self.loaded {
            // Changed back to what is loaded: nothing to do, nothing wrong.
            self.pending = None;
            self.failed = None;
            self.error = None;
            return None;
        }
        if self.failed.as_ref() == Some(&now) {
            return None;
        }
        if self.pending.as_ref() != Some(&now) {
            self.pending = Some(now);
            return None;
        }
        self.pending = None;
        Some(now)
    }

    fn done(&mut self, sigs: Vec<Option<FileSig>>, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.loaded = sigs;
                self.failed = None;
                self.error = None;
            }
            Err(e) => {
                self.failed = Some(sigs);
                self.error = Some(e);
            }
        }
    }
}

/// Read an identity's files and check them as control does: the certificate parses, is
/// valid at `now`, names `template.id`, and the PKCS#8 key belongs to it.
fn load_identity(template: &IdentityRt, now: i64) -> Result<LoadedIdentity, TlsError> {
    let chain = read_pem_certs(&template.cert_path)?;
    let key_bytes = read(&template.key_path)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_bytes)
        .map_err(|_| TlsError::NoKey(template.key_path.clone()))?;
    let loaded = check_material(
        template,
        chain.iter().map(|c| c.to_vec()).collect(),
        key.secret_pkcs8_der().to_vec(),
        now,
    )?;
    let certified = CertifiedKey::from_der(chain, PrivateKeyDer::Pkcs8(key), &tls::provider());
    match certified {
        Ok(_) => Ok(loaded),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch)
        }
        Err(e) => Err(e.into()),
    }
}

/// Check a chain's SPIFFE ID and dates (not the key: see [`load_identity`]).
fn check_material(
    template: &IdentityRt,
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    now: i64,
) -> Result<LoadedIdentity, TlsError> {
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(template.cert_path.clone()))?;
    let x = parse_cert(leaf)?;
    let found = spiffe_of(&x).ok();
    if found.as_deref() != Some(template.id.as_str()) {
        return Err(TlsError::SpiffeMismatch {
            expected: template.id.clone(),
            found,
        });
    }
    let (not_before, not_after) = validity(&x);
    if now < not_before || now > not_after {
        return Err(TlsError::NotValidNow {
            not_before,
            not_after,
        });
    }
    Ok(LoadedIdentity {
        identity: IdentityRt {
            cert_chain_der: chain,
            key_der,
            ..template.clone()
        },
        not_before,
        not_after,
    })
}

#[derive(Debug)]
struct WatchState {
    trust: Tracked,
    /// Same order as `MeshCerts::identities`.
    identities: Vec<Tracked>,
    /// Identities that could not be taken up at all (not in `MeshCerts`).
    rejected: Vec<String>,
}

/// Keeps the mesh certificates current: reloads changed trust and identity files, keeps
/// the previous material when a replacement is bad, and publishes [`MeshCerts`] with a
/// growing generation.
///
/// Change detection is polling: call [`CertWatch::poll`] about once a second from the
/// control thread. A stat per file per second is cheap, needs no watcher thread or
/// inotify limits, sees atomic renames (the inode changes) as well as rewrites, and the
/// two-poll debounce lets an operator replace certificate and key one after the other.
#[derive(Debug)]
pub struct CertWatch {
    current: ArcSwap<MeshCerts>,
    state: Mutex<WatchState>,
}

/// What one [`CertWatch::poll`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// `"trust"` and/or identity SPIFFE IDs now serving new material.
    pub reloaded: Vec<String>,
    /// Replacements refused this time (the old material stays).
    pub errors: Vec<String>,
}

impl CertWatch {
    /// `trust_files`: PEM files whose certificates together are the roots (read now; an
    /// error here is fatal). `identities`: from the snapshot.
    pub fn new(trust_files: Vec<PathBuf>, identities: &[IdentityRt]) -> Result<Self, TlsError> {
        let tracked = Tracked::new(trust_files);
        let trust = trust_from_pem_files(&tracked.paths)?;
        let watch = Self {
            current: ArcSwap::from_pointee(MeshCerts {
                generation: 0,
                trust,
                identities: Vec::new(),
            }),
            state: Mutex::new(WatchState {
                trust: tracked,
                identities: Vec::new(),
                rejected: Vec::new(),
            }),
        };
        watch.set_identities(identities);
        Ok(watch)
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The material for new connections.
    pub fn current(&self) -> Arc<MeshCerts> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Take up the identities of a new snapshot. Unchanged ones (same ID and paths) keep
    /// what is loaded; new ones are read from their files (falling back to the
    /// snapshot's copy, which control checked, if the files are unusable now).
    pub fn set_identities(&self, identities: &[IdentityRt]) {
        let mut st = self.lock();
        let cur = self.current.load_full();
        let now = unix_now(SystemTime::now());
        let mut loaded = Vec::with_capacity(identities.len());
        let mut tracked = Vec::with_capacity(identities.len());
        let mut rejected = Vec::new();
        let mut changed = identities.len() != cur.identities.len();
        for want in identities {
            let same = |l: &LoadedIdentity| {
                l.identity.id == want.id
                    && l.identity.cert_path == want.cert_path
                    && l.identity.key_path == want.key_path
            };
            if let Some(i) = cur.identities.iter().position(same) {
                let mut l = cur.identities[i].clone();
                l.identity.sources = want.sources.clone();
                loaded.push(l);
                tracked.push(std::mem::take(&mut st.identities[i]));
                continue;
            }
            changed = true;
            let mut t = Tracked::new(vec![want.cert_path.clone(), want.key_path.clone()]);
            let sigs = t.loaded.clone();
            match load_identity(want, now) {
                Ok(l) => loaded.push(l),
                Err(file_err) => {
                    match check_material(
                        want,
                        want.cert_chain_der.clone(),
                        want.key_der.clone(),
                        now,
                    ) {
                        Ok(l) => loaded.push(l),
                        Err(e) => {
                            rejected.push(format!("identity {}: {e}", want.id));
                            continue;
                        }
                    }
                    t.loaded = vec![None, None];
                    t.done(sigs, Err(format!("identity {}: {file_err}", want.id)));
                }
            }
            tracked.push(t);
        }
        st.identities = tracked;
        st.rejected = rejected;
        self.publish(&cur, changed, None, loaded);
    }

    /// Take up a snapshot's `trust_roots` if they name other files than those in use.
    /// On error the current trust stays.
    pub fn set_trust_files(&self, paths: &[PathBuf]) -> Result<(), TlsError> {
        let mut st = self.lock();
        if st.trust.paths == paths {
            return Ok(());
        }
        let tracked = Tracked::new(paths.to_vec());
        let trust = trust_from_pem_files(paths)?;
        st.trust = tracked;
        let cur = self.current.load_full();
        self.publish(&cur, false, Some(trust), cur.identities.clone());
        Ok(())
    }

    fn publish(
        &self,
        cur: &MeshCerts,
        changed: bool,
        trust: Option<MeshTrust>,
        identities: Vec<LoadedIdentity>,
    ) {
        let generation = cur.generation + u64::from(changed || trust.is_some());
        self.current.store(Arc::new(MeshCerts {
            generation,
            trust: trust.unwrap_or_else(|| cur.trust.clone()),
            identities,
        }));
    }

    /// Check the files once; reload what changed and has been stable since the last poll.
    pub fn poll(&self) -> PollReport {
        self.poll_at(SystemTime::now())
    }

    fn poll_at(&self, now: SystemTime) -> PollReport {
        let now = unix_now(now);
        let mut st = self.lock();
        let cur = self.current.load_full();
        let mut report = PollReport::default();
        let mut trust = None;
        if let Some(sigs) = st.trust.due() {
            let r = trust_from_pem_files(&st.trust.paths).map_err(|e| format!("trust: {e}"));
            match r {
                Ok(t) => {
                    trust = Some(t);
                    report.reloaded.push("trust".into());
                    st.trust.done(sigs, Ok(()));
                }
                Err(e) => {
                    report.errors.push(e.clone());
                    st.trust.done(sigs, Err(e));
                }
            }
        }
        let mut identities = cur.identities.clone();
        for (t, l) in st.identities.iter_mut().zip(identities.iter_mut()) {
            let Some(sigs) = t.due() else { continue };
            match load_identity(&l.identity, now) {
                Ok(new) => {
                    report.reloaded.push(l.identity.id.clone());
                    *l = new;
                    t.done(sigs, Ok(()));
                }
                Err(e) => {
                    let e = format!(
                        "identity {}: {e}; keeping the loaded certificate",
                        l.identity.id
                    );
                    report.errors.push(e.clone());
                    t.done(sigs, Err(e));
                }
            }
        }
        let changed = report.reloaded.iter().any(|r| r != "trust");
        if changed || trust.is_some() {
            self.publish(&cur, changed, trust, identities);
        }
        report
    }

    /// Current problems: replacements refused (until the files change again) and
    /// identities that could not be taken up.
    pub fn errors(&self) -> Vec<String> {
        let st = self.lock();
        std::iter::once(&st.trust)
            .chain(&st.identities)
            .filter_map(|t| t.error.clone())
            .chain(st.rejected.iter().cloned())
            .collect()
    }

    /// Prometheus text: seconds until each identity's and each trust root's certificate
    /// expires (negative once expired).
    pub fn expiry_metrics(&self, now: SystemTime, out: &mut String) {
        let cur = self.current();
        let now = unix_now(now);
        out.push_str(
            "# HELP xdpmesh_identity_expiry_seconds Seconds until the identity's certificate expires.\n\
             # TYPE xdpmesh_identity_expiry_seconds gauge\n",
        );
        for l in &cur.identities {
            let _ = writeln!(
                out,
                "xdpmesh_identity_expiry_seconds{{id=\"{}\"}} {}",
                label_value(&l.identity.id),
                l.not_after - now
            );
        }
        out.push_str(
            "# HELP xdpmesh_trust_root_expiry_seconds Seconds until the trusted root certificate expires.\n\
             # TYPE xdpmesh_trust_root_expiry_seconds gauge\n",
        );
        for r in cur.trust.root_infos() {
            let _ = writeln!(
                out,
                "xdpmesh_trust_root_expiry_seconds{{subject=\"{}\",serial=\"{}\"}} {}",
                label_value(&r.subject),
                label_value(&r.serial),
                r.not_after - now
            );
        }
    }

    /// One line per identity or root with under 20 % of its lifetime left (or expired).
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let cur = self.current();
        let now = unix_now(now);
        let ids = cur.identities.iter().map(|l| {
            (
                format!("identity {}", l.identity.id),
                l.not_before,
                l.not_after,
            )
        });
        let roots = cur.trust.root_infos().iter().map(|r| {
            (
                format!("trust root \"{}\" (serial {})", r.subject, r.serial),
                r.not_before,
                r.not_after,
            )
        });
        ids.chain(roots)
            .filter_map(|(what, nb, na)| {
                let left = na - now;
                let life = (na - nb).max(1);
                // left / life < 20 %, in integers.
                if left.saturating_mul(5) >= life {
                    return None;
                }
                Some(if left <= 0 {
                    format!(
                        "{what}: certificate expired {} ago",
                        humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
                    )
                } else {
                    format!(
                        "{what}: certificate expires in {} ({}% of its lifetime left)",
                        humantime::format_duration(Duration::from_secs(left as u64)),
                        left * 100 / life
                    )
                })
            })
            .collect()
    }
}

/// Escape a Prometheus label value (text format: `\\`, `\"`, `\n`).
fn label_value(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::test_support::*;
    use mesh::tls::{client_config, server_config};
    use rcgen::date_time_ymd;
    use std::time::UNIX_EPOCH;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Write via a temporary file and rename, as operators and `xdpmesh ca` do.
        fn put(&self, name: &str, contents: &str) {
            let tmp = self.path(&format!(".{name}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }

        fn put_leaf(&self, l: &Leaf) {
            self.put("cert.pem", &l.cert.pem());
            self.put("key.pem", &l.key.serialize_pem());
        }

        fn identity(&self, id: &str, l: &Leaf) -> IdentityRt {
            IdentityRt {
                cert_path: self.path("cert.pem"),
                key_path: self.path("key.pem"),
                ..identity(id, l)
            }
        }
    }

    /// Poll until a reload or an error is reported (the debounce needs two polls).
    fn poll_settled(w: &CertWatch) -> PollReport {
        for _ in 0..4 {
            let r = w.poll();
            if r != PollReport::default() {
                return r;
            }
        }
        PollReport::default()
    }

    fn presented_leaf(w: &CertWatch, root: &Ca) -> Vec<u8> {
        let cur = w.current();
        let sc = server_config(cur.identity(GW_B).unwrap(), &cur.trust).unwrap();
        let cc = client_config(&identity(GW_A, &leaf(root, GW_A)), &cur.trust, GW_B).unwrap();
        let r = run(&cc, &sc, "reviews");
        assert!(r.ok(), "{:?} {:?}", r.client_err, r.server_err);
        r.c.peer_certificates().unwrap()[0].to_vec()
    }

    #[test]
    fn renamed_cert_and_key_are_reloaded_for_new_configs() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let first = leaf(&root, GW_B);
        f.put_leaf(&first);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &first)]).unwrap();
        let g0 = w.generation();
        assert!(w.errors().is_empty(), "{:?}", w.errors());
        assert_eq!(presented_leaf(&w, &root), first.cert.der().to_vec());
        assert_eq!(w.poll(), PollReport::default());

        let second = leaf(&root, GW_B);
        f.put_leaf(&second);
        // Debounce: the first poll only notes the change.
        assert_eq!(w.poll(), PollReport::default());
        assert_eq!(w.generation(), g0);
        let r = w.poll();
        assert_eq!(r.reloaded, vec![GW_B.to_string()]);
        assert!(r.errors.is_empty());
        assert_eq!(w.generation(), g0 + 1);
        assert_eq!(presented_leaf(&w, &root), second.cert.der().to_vec());
        assert_eq!(w.poll(), PollReport::default());
    }

    #[test]
    fn bad_replacements_keep_the_old_certificate_and_report() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let good = leaf(&root, GW_B);
        f.put_leaf(&good);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &good)]).unwrap();
        let g0 = w.generation();

        // A new certificate with someone else's key.
        let new = leaf(&root, GW_B);
        f.put("cert.pem", &new.cert.pem());
        f.put("key.pem", &leaf(&root, GW_B).key.serialize_pem());
        let r = poll_settled(&w);
        assert!(r.reloaded.is_empty());
        assert!(r.errors[0].contains("key does not match"), "{r:?}");
        assert_eq!(w.generation(), g0);
        assert_eq!(presented_leaf(&w, &root), good.cert.der().to_vec());
        assert!(w.errors()[0].contains("key does not match"));
        // Reported once, not on every poll.
        assert_eq!(w.poll(), PollReport::default());

        // A certificate for another identity.
        let other = leaf(&root, "spiffe://corp.mesh/gateway/gw-c");
        f.put_leaf(&other);
        let r = poll_settled(&w);
        assert!(r.errors[0].contains("gw-c"), "{r:?}");
        assert_eq!(w.generation(), g0);

        // An expired one.
        f.put_leaf(&leaf_dated(&root, GW_B, (2021, 1, 1), (2021, 1, 2)));
        let r = poll_settled(&w);
        assert!(r.errors[0].contains("not valid now"), "{r:?}");

        // Fixed: taken up, error gone.
        f.put_leaf(&new);
        let r = poll_settled(&w);
        assert_eq!(r.reloaded, vec![GW_B.to_string()]);
        assert_eq!(w.generation(), g0 + 1);
        assert!(w.errors().is_empty());
        assert_eq!(presented_leaf(&w, &root), new.cert.der().to_vec());
    }

    #[test]
    fn trust_files_reload_for_root_rotation() {
        let (old, new) = (ca("mesh root 2025"), ca("mesh root 2026"));
        let f = Files::new();
        f.put("roots.pem", &old.cert.pem());
        let gw_b = leaf(&old, GW_B);
        f.put_leaf(&gw_b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &gw_b)]).unwrap();
        let g0 = w.generation();
        assert_eq!(w.current().trust.len(), 1);

        // The snapshot names other files: taken up at once; a bad list keeps the trust.
        f.put("new.pem", &new.cert.pem());
        assert!(w.set_trust_files(&[f.path("missing.pem")]).is_err());
        assert_eq!(w.generation(), g0);
        w.set_trust_files(&[f.path("roots.pem"), f.path("new.pem")])
            .unwrap();
        assert_eq!((w.generation(), w.current().trust.len()), (g0 + 1, 2));
        w.set_trust_files(&[f.path("roots.pem")]).unwrap();
        assert_eq!((w.generation(), w.current().trust.len()), (g0 + 2, 1));
        let g0 = w.generation();

        f.put("roots.pem", "not a certificate\n");
        let r = poll_settled(&w);
        assert!(r.errors[0].starts_with("trust:"), "{r:?}");
        assert_eq!(w.current().trust.len(), 1);

        f.put(
            "roots.pem",
            &format!("{}{}", old.cert.pem(), new.cert.pem()),
        );
        let r = poll_settled(&w);
        assert_eq!(r.reloaded, vec!["trust".to_string()]);
        assert_eq!(w.generation(), g0 + 1);
        assert_eq!(w.current().trust.len(), 2);
        // A client with a leaf from the new root is now accepted.
        let cur = w.current();
        let sc = server_config(cur.identity(GW_B).unwrap(), &cur.trust).unwrap();
        let cc = client_config(&identity(GW_A, &leaf(&new, GW_A)), &cur.trust, GW_B).unwrap();
        assert!(run(&cc, &sc, "reviews").ok());
    }

    #[test]
    fn set_identities_adds_keeps_and_drops() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        let b = leaf(&root, GW_B);
        f.put_leaf(&b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[]).unwrap();
        let g0 = w.generation();
        assert!(w.current().identities.is_empty());

        let id_b = f.identity(GW_B, &b);
        w.set_identities(std::slice::from_ref(&id_b));
        assert_eq!(w.generation(), g0 + 1);
        w.set_identities(std::slice::from_ref(&id_b));
        assert_eq!(
            w.generation(),
            g0 + 1,
            "unchanged identities keep the generation"
        );

        // Files unreadable: the snapshot's checked copy is used, the problem reported.
        let a = leaf(&root, GW_A);
        let id_a = identity(GW_A, &a);
        w.set_identities(&[id_b.clone(), id_a]);
        assert_eq!(w.generation(), g0 + 2);
        assert_eq!(
            w.current().identity(GW_A).unwrap().cert_chain_der[0],
            a.cert.der().to_vec()
        );
        assert!(w.errors().iter().any(|e| e.contains(GW_A)));

        w.set_identities(&[]);
        assert_eq!(w.generation(), g0 + 3);
        assert!(w.current().identity(GW_B).is_none());
        assert!(w.errors().is_empty());
    }

    #[test]
    fn expiry_metrics_and_warnings_at_a_fixed_time() {
        let root = ca("mesh root");
        let f = Files::new();
        f.put("roots.pem", &root.cert.pem());
        // Valid 2020-01-01 to 2100-01-01: 80 years; 20 % is 16 years.
        let b = leaf(&root, GW_B);
        f.put_leaf(&b);
        let w = CertWatch::new(vec![f.path("roots.pem")], &[f.identity(GW_B, &b)]).unwrap();
        let at = |y, m, d| {
            UNIX_EPOCH + Duration::from_secs(date_time_ymd(y, m, d).unix_timestamp() as u64)
        };
        let not_after = date_time_ymd(2100, 1, 1).unix_timestamp();
        let root_after = date_time_ymd(2120, 1, 1).unix_timestamp();

        let now = at(2030, 6, 1);
        let mut out = String::new();
        w.expiry_metrics(now, &mut out);
        let now_s = date_time_ymd(2030, 6, 1).unix_timestamp();
        assert!(
            out.contains(&format!(
                "xdpmesh_identity_expiry_seconds{{id=\"{GW_B}\"}} {}\n",
                not_after - now_s
            )),
            "{out}"
        );
        assert!(out.contains("# TYPE xdpmesh_identity_expiry_seconds gauge\n"));
        assert!(
            out.contains("xdpmesh_trust_root_expiry_seconds{subject=\"CN=mesh root\",serial=\"")
                && out.contains(&format!("\"}} {}\n", root_after - now_s)),
            "{out}"
        );
        assert!(w.warnings(now).is_empty());

        // 2085: 15 of 80 years left (18.75 %) for the leaf; the root has 35 of 100.
        let warn = w.warnings(at(2085, 1, 1));
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains(GW_B) && warn[0].contains("18% of its lifetime"));
        // Just above 20 %: no warning.
        assert!(w.warnings(at(2083, 12, 1)).is_empty());

        // Expired (leaf) and root under 20 % (2110: 10 of 100 years).
        let warn = w.warnings(at(2110, 1, 1));
        assert_eq!(warn.len(), 2, "{warn:?}");
        assert!(warn[0].contains("expired"));
        assert!(warn[1].contains("trust root \"CN=mesh root\""));
        let mut out = String::new();
        w.expiry_metrics(at(2110, 1, 1), &mut out);
        assert!(out.contains(&format!("{GW_B}\"}} -")), "{out}");
    }

    #[test]
    fn trust_from_pem_files_reads_every_certificate_and_refuses_empty() {
        let (r1, r2, r3) = (ca("one"), ca("two"), ca("three"));
        let f = Files::new();
        f.put("a.pem", &format!("{}{}", r1.cert.pem(), r2.cert.pem()));
        f.put("b.pem", &r3.cert.pem());
        f.put("empty.pem", "");
        let t = trust_from_pem_files(&[f.path("a.pem"), f.path("b.pem")]).unwrap();
        assert_eq!(t.len(), 3);
        assert!(matches!(
            trust_from_pem_files(&[f.path("empty.pem")]),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            trust_from_pem_files(&[f.path("missing.pem")]),
            Err(TlsError::Io { .. })
        ));
        assert!(matches!(
            MeshTrust::from_der(Vec::new()),
            Err(TlsError::NoTrustRoots)
        ));
    }
}
