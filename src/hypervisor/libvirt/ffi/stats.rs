//! Bulk statistics: one `virConnectGetAllDomainStats` call, the records copied into owned
//! values and freed at once.

use super::*;

/// The bulk-stats groups idle detection reads (DESIGN 1, "Idle shutdown").
pub(in crate::hypervisor::libvirt) const STATS_GROUPS: c_uint = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BLOCK
    | sys::VIR_DOMAIN_STATS_INTERFACE;

/// The list `virConnectGetAllDomainStats` returns, freed with everything in it on drop.
pub(in crate::hypervisor::libvirt) struct StatsRecords(*mut sys::virDomainStatsRecordPtr);

impl Drop for StatsRecords {
    fn drop(&mut self) {
        // SAFETY: the pointer is null or the list libvirt returned, freed exactly once here;
        // nothing borrowed from it outlives `all_domain_stats`.
        unsafe { sys::virDomainStatsRecordListFree(self.0) };
    }
}

/// What [`DomainStats`] keeps of one record's typed parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(in crate::hypervisor::libvirt) struct Counters {
    pub(in crate::hypervisor::libvirt) running: bool,
    pub(in crate::hypervisor::libvirt) cpu_time_ns: u64,
    pub(in crate::hypervisor::libvirt) block_bytes: u64,
    pub(in crate::hypervisor::libvirt) net_bytes: u64,
}

/// Whether `rest` is `<index><suffix>` for one of `suffixes`, as in `0.rd.bytes`.
pub(in crate::hypervisor::libvirt) fn indexed(rest: &[u8], suffixes: &[&[u8]]) -> bool {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && suffixes.contains(&&rest[digits..])
}

impl Counters {
    pub(in crate::hypervisor::libvirt) fn add(&mut self, field: &[u8], value: u64) {
        if field == b"state.state" {
            // Paused, shut off, crashed, ... are not running; blocked is (as in `list`).
            self.running = value == u64::from(sys::VIR_DOMAIN_RUNNING)
                || value == u64::from(sys::VIR_DOMAIN_BLOCKED);
        } else if field == b"cpu.time" {
            self.cpu_time_ns = value;
        } else if let Some(rest) = field.strip_prefix(b"block.") {
            if indexed(rest, &[b".rd.bytes", b".wr.bytes"]) {
                self.block_bytes = self.block_bytes.saturating_add(value);
            }
        } else if let Some(rest) = field.strip_prefix(b"net.") {
            if indexed(rest, &[b".rx.bytes", b".tx.bytes"]) {
                self.net_bytes = self.net_bytes.saturating_add(value);
            }
        }
    }
}

/// The name of a typed parameter, without its NUL.
pub(in crate::hypervisor::libvirt) fn param_field(p: &sys::virTypedParameter) -> &[u8] {
    // SAFETY: `c_char` and `u8` have the same size and alignment, and the slice covers
    // exactly the array borrowed from `p`.
    let raw = unsafe { std::slice::from_raw_parts(p.field.as_ptr().cast::<u8>(), p.field.len()) };
    CStr::from_bytes_until_nul(raw).map_or(raw, CStr::to_bytes)
}

/// The value of an integer typed parameter; `None` for other types and negative numbers.
pub(in crate::hypervisor::libvirt) fn param_u64(p: &sys::virTypedParameter) -> Option<u64> {
    let v = &p.value;
    match c_uint::try_from(p.type_).ok()? {
        sys::VIR_TYPED_PARAM_ULLONG => {
            // SAFETY: `type_` says libvirt wrote this union member.
            Some(unsafe { v.ul })
        }
        sys::VIR_TYPED_PARAM_LLONG => {
            // SAFETY: `type_` says libvirt wrote this union member.
            u64::try_from(unsafe { v.l }).ok()
        }
        sys::VIR_TYPED_PARAM_UINT => {
            // SAFETY: `type_` says libvirt wrote this union member.
            Some(u64::from(unsafe { v.ui }))
        }
        sys::VIR_TYPED_PARAM_INT => {
            // SAFETY: `type_` says libvirt wrote this union member.
            u64::try_from(unsafe { v.i }).ok()
        }
        _ => None,
    }
}

/// One bulk-stats sample of every domain on `conn`: a single `virConnectGetAllDomainStats`
/// call, copied into owned values, the records freed before returning. (The `virt` crate's
/// `get_all_domain_stats` frees only the outer array.)
pub(in crate::hypervisor::libvirt) fn all_domain_stats(
    conn: &Connect,
) -> Result<Vec<DomainStats>, VirtError> {
    let mut raw: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` holds a valid virConnectPtr for the call and `raw` is a valid place
    // for the returned list, which `StatsRecords` then owns.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), STATS_GROUPS, &mut raw, 0) };
    if n < 0 {
        return Err(VirtError::last_error());
    }
    Ok(fold_records(StatsRecords(raw), n))
}

/// The same counters, one `virDomainListGetStats` call per domain: what a sampler without
/// the bulk call would do. Only the benchmark uses it, to show what the bulk call saves.
pub(in crate::hypervisor::libvirt) fn per_domain_stats(
    conn: &Connect,
) -> Result<Vec<DomainStats>, VirtError> {
    let domains = conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?;
    let mut out = Vec::with_capacity(domains.len());
    for d in &domains {
        let mut raw: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: `one` is a NULL-terminated array holding a domain pointer that `domains`
        // keeps alive for the call; `raw` receives a list that `StatsRecords` then owns.
        let n = unsafe {
            let mut one = [d.as_ptr(), std::ptr::null_mut()];
            sys::virDomainListGetStats(one.as_mut_ptr(), STATS_GROUPS, &mut raw, 0)
        };
        if n < 0 {
            return Err(VirtError::last_error());
        }
        out.extend(fold_records(StatsRecords(raw), n));
    }
    Ok(out)
}

/// Copies the counters out of a stats list and frees it.
pub(in crate::hypervisor::libvirt) fn fold_records(
    records: StatsRecords,
    n: c_int,
) -> Vec<DomainStats> {
    let n = if records.0.is_null() {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: on success the list holds `n` record pointers (then a NULL), alive until
        // `records` drops at the end of this function.
        let rec = unsafe { *records.0.add(i) };
        // SAFETY: each non-null entry points to a record libvirt filled in.
        let Some(rec) = (unsafe { rec.as_ref() }) else {
            break;
        };
        // SAFETY: the record holds a reference to its domain while the list lives.
        let Some(name) = (unsafe { domain_name(rec.dom) }) else {
            continue;
        };
        let params: &[sys::virTypedParameter] = match usize::try_from(rec.nparams) {
            Ok(len) if len > 0 && !rec.params.is_null() => {
                // SAFETY: `params` points to `nparams` typed parameters owned by the record.
                unsafe { std::slice::from_raw_parts(rec.params, len) }
            }
            _ => &[],
        };
        let mut c = Counters::default();
        for p in params {
            if let Some(v) = param_u64(p) {
                c.add(param_field(p), v);
            }
        }
        let vm = name.parse::<VmId>().ok();
        out.push(DomainStats {
            name,
            vm,
            running: c.running,
            cpu_time_ns: c.cpu_time_ns,
            block_bytes: c.block_bytes,
            net_bytes: c.net_bytes,
        });
    }
    out
}
