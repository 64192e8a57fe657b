//! LUKS passphrases in libvirt: ephemeral, private secrets that live only around the one
//! call that needs them, and the purge of any that outlived a killed daemon.

use super::*;

/// Libvirt secrets defined for one call; dropping the guard undefines them, so every path
/// out of a launch or attach, early returns and panics included, removes them.
pub(super) struct SecretGuard {
    pub(super) vm: VmId,
    pub(super) secrets: Vec<(Uuid, Secret)>,
}

impl SecretGuard {
    pub(super) fn new(vm: VmId) -> Self {
        Self {
            vm,
            secrets: Vec::new(),
        }
    }

    pub(super) fn uuids(&self) -> Vec<Uuid> {
        self.secrets.iter().map(|(u, _)| *u).collect()
    }
}

impl Drop for SecretGuard {
    fn drop(&mut self) {
        for (uuid, secret) in self.secrets.drain(..) {
            match secret.undefine() {
                Ok(()) => tracing::debug!(vm = %self.vm, secret = %uuid, "secret undefined"),
                // Ephemeral secrets die with libvirtd at the latest; `our_secrets` reports
                // any that outlive a call so that the service can purge them.
                Err(e) => tracing::warn!(
                    vm = %self.vm,
                    secret = %uuid,
                    error = %e.message(),
                    "cannot undefine a launch secret"
                ),
            }
        }
    }
}

impl Libvirt {
    /// Defines an ephemeral, private secret holding `disk`'s passphrase, owned by `guard`.
    pub(super) fn define_secret(
        &self,
        conn: &Connect,
        guard: &mut SecretGuard,
        disk: &DiskSpec,
    ) -> Result<Uuid, HypervisorError> {
        let uuid = Uuid::new_v4();
        let secret = conn
            .define_secret_xml(&xml::secret_xml(uuid, disk.drive)?, 0)
            .map_err(|e| self.error(conn, "Defining the drive secret failed", e))?;
        // In the guard before the value is set: a secret must not survive a failed set.
        guard.secrets.push((uuid, secret.clone()));
        secret
            .set_value(disk.passphrase.expose(), 0)
            .map_err(|e| self.error(conn, "Setting the drive secret failed", e))?;
        Ok(uuid)
    }

    /// Undefines every secret vmwarden defined that still exists, and returns how many.
    /// For start-up, when no launch or attach can be in flight: secrets outlive a call only
    /// when the connection died under it.
    ///
    /// `mine` gets each secret's description (`vmwarden drive <id>`) and says whether this
    /// daemon owns it: several daemons may share one libvirtd (tests do), and another one's
    /// launch in flight must keep its secret.
    pub fn purge_our_secrets(&self, mine: impl Fn(&str) -> bool) -> Result<usize, HypervisorError> {
        let conn = self.connection()?;
        let mut n = 0;
        for (uuid, secret, desc) in self.our_secret_handles(&conn)? {
            if !mine(&desc) {
                continue;
            }
            match secret.undefine() {
                Ok(()) => n += 1,
                Err(e) if code_is(&e, ErrorNumber::NoSecret) => {}
                Err(e) => return Err(self.error(&conn, "Undefining a stale secret failed", e)),
            }
            tracing::info!(secret = %uuid, "stale vmwarden secret undefined");
        }
        Ok(n)
    }

    pub(super) fn our_secret_handles(
        &self,
        conn: &Connect,
    ) -> Result<Vec<(String, Secret, String)>, HypervisorError> {
        let all = conn
            .list_all_secrets(0)
            .map_err(|e| self.error(conn, "Listing secrets failed", e))?;
        let mut ours = Vec::new();
        for secret in all {
            let desc = match secret.xml_desc(0) {
                Ok(x) => xml::secret_description(&x)?,
                // Undefined between the listing and now: not there any more.
                Err(e) if code_is(&e, ErrorNumber::NoSecret) => continue,
                Err(e) => return Err(self.error(conn, "Reading a secret failed", e)),
            };
            if let Some(desc) = desc.filter(|d| xml::is_our_secret_description(d)) {
                let uuid = secret
                    .uuid_string()
                    .map_err(|e| self.error(conn, "Reading a secret failed", e))?;
                ours.push((uuid, secret, desc));
            }
        }
        Ok(ours)
    }
}
