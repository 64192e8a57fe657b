//! A scripted `Hypervisor` for fault injection only: domains are entries in a map, images
//! are small files, and any call can be made to fail once with a chosen error. Everything
//! it stands in for is also tested against real libvirtd + QEMU; this exists for the faults
//! real libvirt cannot produce on demand (a hot-plug refused after the store claimed the
//! drive, an image tool that fails mid-creation).

use super::{DiskSpec, DomainInfo, DomainSpec, DomainType, Hypervisor, HypervisorError};
use crate::model::{DriveId, SecretBytes, VmId};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Which call a scripted fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `launch`.
    Launch,
    /// `attach_disk`.
    Attach,
    /// `detach_disk`.
    Detach,
    /// `create_image`.
    CreateImage,
    /// `is_running`, `list` and `ping`: libvirt unreachable.
    Query,
}

/// The scripted hypervisor.
#[derive(Debug, Default)]
pub struct Scripted {
    /// Running domains and the drives plugged into each.
    domains: Mutex<HashMap<VmId, Vec<DriveId>>>,
    /// Faults to inject, first in first out, each consumed by the first matching call.
    faults: Mutex<VecDeque<(Call, HypervisorError)>>,
    /// Calls made, in order.
    calls: Mutex<Vec<Call>>,
}

impl Scripted {
    /// No domains, no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `call` fail with `err`.
    pub fn fail_next(&self, call: Call, err: HypervisorError) {
        self.faults.lock().unwrap().push_back((call, err));
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The drives plugged into a running domain.
    pub fn plugged(&self, id: VmId) -> Option<Vec<DriveId>> {
        self.domains.lock().unwrap().get(&id).cloned()
    }

    fn enter(&self, call: Call) -> Result<(), HypervisorError> {
        self.calls.lock().unwrap().push(call);
        let mut faults = self.faults.lock().unwrap();
        match faults.iter().position(|(c, _)| *c == call) {
            Some(i) => Err(faults.remove(i).expect("present").1),
            None => Ok(()),
        }
    }
}

impl Hypervisor for Scripted {
    fn ping(&self) -> Result<String, HypervisorError> {
        self.enter(Call::Query)?;
        Ok("scripted".into())
    }

    fn domain_type(&self) -> Result<DomainType, HypervisorError> {
        Ok(DomainType::Qemu)
    }

    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError> {
        self.enter(Call::Launch)?;
        let mut d = self.domains.lock().unwrap();
        if d.contains_key(&spec.id) {
            return Err(HypervisorError::AlreadyRunning);
        }
        d.insert(spec.id, spec.disks.iter().map(|k| k.drive).collect());
        Ok(())
    }

    fn shutdown(&self, id: VmId) -> Result<(), HypervisorError> {
        // The scripted guest obeys ACPI at once.
        self.destroy(id)
    }

    fn destroy(&self, id: VmId) -> Result<(), HypervisorError> {
        self.domains
            .lock()
            .unwrap()
            .remove(&id)
            .map(|_| ())
            .ok_or(HypervisorError::NoDomain)
    }

    fn is_running(&self, id: VmId) -> Result<bool, HypervisorError> {
        self.enter(Call::Query)?;
        Ok(self.domains.lock().unwrap().contains_key(&id))
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        self.enter(Call::Query)?;
        Ok(self
            .domains
            .lock()
            .unwrap()
            .keys()
            .map(|id| DomainInfo {
                name: id.to_string(),
                vm: Some(*id),
                host: None,
                running: true,
            })
            .collect())
    }

    fn attach_disk(&self, id: VmId, disk: &DiskSpec) -> Result<(), HypervisorError> {
        self.enter(Call::Attach)?;
        self.domains
            .lock()
            .unwrap()
            .get_mut(&id)
            .ok_or(HypervisorError::NoDomain)?
            .push(disk.drive);
        Ok(())
    }

    fn detach_disk(
        &self,
        id: VmId,
        drive: DriveId,
        _timeout: Duration,
    ) -> Result<(), HypervisorError> {
        self.enter(Call::Detach)?;
        if let Some(d) = self.domains.lock().unwrap().get_mut(&id) {
            d.retain(|x| *x != drive);
        }
        Ok(())
    }

    fn our_secrets(&self) -> Result<Vec<String>, HypervisorError> {
        Ok(vec![])
    }

    fn create_image(
        &self,
        path: &Path,
        size_mib: u64,
        _passphrase: &SecretBytes,
    ) -> Result<(), HypervisorError> {
        self.enter(Call::CreateImage)?;
        std::fs::write(path, format!("scripted image of {size_mib} MiB"))
            .map_err(|e| HypervisorError::Image(e.to_string()))
    }
}
