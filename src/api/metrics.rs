//! `GET /metrics`: Prometheus text. Every label value comes from a closed set (the route
//! patterns, the standard methods, the problem codes), so no request can grow it: an
//! unknown method is `OTHER`, an unknown path is the route `unmatched`.

use super::error::ApiError;
use super::routes::{ApiBody, State};
use crate::model::VmState;
use crate::service::Principal;
use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// A Prometheus histogram: cumulative counts per bucket, sum and count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// The method label: the standard methods by name, anything else `OTHER`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Request counters of the HTTP layer.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, &'static str, u16), u64>>,
    /// Launch attempts by outcome code (`ok` or the problem code).
    launches: Mutex<HashMap<&'static str, u64>>,
    latency: Mutex<HashMap<&'static str, Histogram>>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(
        &self,
        m: &Method,
        route: &'static str,
        status: u16,
        code: &'static str,
        took: Duration,
    ) {
        if route == "/v1/vms/{id}/start" {
            *self.launches.lock().unwrap().entry(code).or_default() += 1;
        }
        *self
            .requests
            .lock()
            .unwrap()
            .entry((method_label(m), route, status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap()
            .entry(route)
            .or_default()
            .observe(took.as_secs_f64());
    }
}

/// Renders every metric (admins only: the service asks policy).
pub async fn render(st: &State, p: &Principal) -> Result<Response<ApiBody>, ApiError> {
    let vms = st.svc.metrics_inventory(p).await?;
    let m = &st.metrics;
    let mut out = String::new();
    out.push_str("# HELP vmwarden_vms VMs by state.\n# TYPE vmwarden_vms gauge\n");
    for state in VmState::ALL {
        let n = vms.iter().filter(|v| v.state == state).count();
        let _ = writeln!(out, "vmwarden_vms{{state=\"{}\"}} {n}", state.as_str());
    }
    out.push_str("# HELP vmwarden_http_requests_total API requests by method, route and status.\n# TYPE vmwarden_http_requests_total counter\n");
    let mut rows: Vec<_> = m
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(k, n)| (*k, *n))
        .collect();
    rows.sort();
    for ((method, route, status), n) in rows {
        let _ = writeln!(
            out,
            "vmwarden_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    out.push_str("# HELP vmwarden_launches_total VM launches by outcome code.\n# TYPE vmwarden_launches_total counter\n");
    let mut launches: Vec<_> = m
        .launches
        .lock()
        .unwrap()
        .iter()
        .map(|(c, n)| (*c, *n))
        .collect();
    launches.sort();
    for (code, n) in launches {
        let _ = writeln!(out, "vmwarden_launches_total{{code=\"{code}\"}} {n}");
    }
    out.push_str("# HELP vmwarden_idle_shutdowns_total VMs shut down for inactivity.\n# TYPE vmwarden_idle_shutdowns_total counter\n");
    let _ = writeln!(
        out,
        "vmwarden_idle_shutdowns_total {}",
        st.svc.idle_shutdowns()
    );
    out.push_str("# HELP vmwarden_http_request_duration_seconds API request latency by route.\n# TYPE vmwarden_http_request_duration_seconds histogram\n");
    let mut hist: Vec<_> = m
        .latency
        .lock()
        .unwrap()
        .iter()
        .map(|(r, h)| (*r, h.clone()))
        .collect();
    hist.sort_by_key(|(r, _)| *r);
    for (route, h) in hist {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "vmwarden_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "vmwarden_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "vmwarden_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "vmwarden_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count
        );
    }
    let up = st.svc.health().await.status == "ok";
    out.push_str("# HELP vmwarden_libvirt_connected Whether libvirt answers.\n# TYPE vmwarden_libvirt_connected gauge\n");
    let _ = writeln!(out, "vmwarden_libvirt_connected {}", up as u8);
    let mut r = Response::new(ApiBody::Full(Some(Bytes::from(out))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::default();
        for i in 0..50 {
            let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            m.record(
                &method,
                "unmatched",
                404,
                "no_route",
                Duration::from_millis(1),
            );
        }
        m.record(&Method::GET, "/v1/me", 200, "ok", Duration::from_millis(1));
        let keys = m.requests.lock().unwrap().len();
        assert_eq!(keys, 2);
        assert_eq!(m.latency.lock().unwrap().len(), 2);
    }
}
