//! The families labelled by server and backend, written as OpenMetrics text directly.
//!
//! They are most of a large configuration's exposition (13 families, 54 lines a backend,
//! 34 of them histogram buckets): at 10 000 backends, 50 MB. Through prometheus-client's
//! encoder each line is some fifteen writes behind a `dyn Write`, and each bucket's
//! bound is formatted anew; here a backend's labels are written once per scrape and
//! each line is a few appends to the chunk being filled. The text is the encoder's, byte
//! for byte (the test below holds both to one fixture), so a scraper sees one dialect.

use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::Backend;
use crate::histogram::{Bounds, ConnectBounds, ConnectionBounds, Snapshot};
use crate::pool::Pool;

use super::collector::state;

/// The values of the `state` label, in output order.
pub(super) const STATES: [&str; 5] = ["up", "down", "ejected", "draining", "disabled"];

/// Each server's pool as the scrape began, so that every family lists the same backends
/// even if a reload lands meanwhile.
pub(super) struct BackendFamilies {
    pools: Vec<(String, Arc<Pool>)>,
}

impl BackendFamilies {
    pub(super) fn new(pools: Vec<(String, Arc<Pool>)>) -> Self {
        BackendFamilies { pools }
    }

    /// Writes every per-backend family into `out`.
    pub(super) fn write(&self, out: &mut impl Write) -> fmt::Result {
        let backends: Vec<&Backend> = self
            .pools
            .iter()
            .flat_map(|(_, pool)| pool.backends().iter().map(|b| &**b))
            .collect();
        // `server="NAME",backend="KEY"` of each backend, in the order of `backends`.
        let mut labels = String::new();
        let mut ends = Vec::with_capacity(backends.len());
        for (server, pool) in &self.pools {
            for backend in pool.backends() {
                write!(labels, "server=\"{server}\",backend=\"{}\"", backend.key())?;
                ends.push(labels.len());
            }
        }
        let starts = std::iter::once(0).chain(ends.iter().copied());
        let labelled: Vec<(&str, &Backend)> = starts
            .zip(ends.iter().copied())
            .map(|(start, end)| &labels[start..end])
            .zip(backends.iter().copied())
            .collect();
        let mut text = Text { out, labelled };

        text.counter(
            "sluice_backend_connect_failures",
            None,
            "Failed dials to the backend, timeouts included.",
            |b| read(&b.state.stats.connect_failures),
        )?;
        text.counter(
            "sluice_backend_connect_timeouts",
            None,
            "Dials to the backend that gave up after the connect timeout.",
            |b| read(&b.state.stats.connect_timeouts),
        )?;
        text.counter(
            "sluice_backend_sent",
            Some("bytes"),
            "Bytes relayed from clients to the backend.",
            |b| read(&b.state.stats.bytes_to_backend),
        )?;
        text.counter(
            "sluice_backend_received",
            Some("bytes"),
            "Bytes relayed from the backend to clients.",
            |b| read(&b.state.stats.bytes_from_backend),
        )?;
        text.checks()?;
        text.counter(
            "sluice_backend_health_transitions",
            None,
            "Times the backend went down or came back up (active or passive health).",
            |b| read(&b.state.stats.health_transitions),
        )?;
        text.counter(
            "sluice_backend_ejections",
            None,
            "Times outlier ejection took the backend out of rotation.",
            |b| read(&b.state.stats.ejections),
        )?;
        text.counter(
            "sluice_backend_ejection_returns",
            None,
            "Times the backend came back from an ejection (its time up, or its check passed).",
            |b| read(&b.state.stats.ejection_returns),
        )?;
        text.gauge(
            "sluice_backend_connections_active",
            "Connections open to the backend now, including those still connecting.",
            |b| read(&b.state.stats.active),
        )?;
        text.gauge(
            "sluice_backend_up",
            "1 if the backend is healthy (active and passive checks) and not ejected, else 0.",
            |b| u64::from(b.is_up()),
        )?;
        text.states()?;
        text.histogram::<ConnectBounds, { ConnectBounds::NS.len() }>(
            "sluice_backend_connect_duration",
            "Time to establish a connection to the backend (successful dials).",
            |b| b.state.stats.connect_duration.snapshot(),
        )?;
        text.histogram::<ConnectionBounds, { ConnectionBounds::NS.len() }>(
            "sluice_connection_duration",
            "Lifetime of relayed connections, from accept to close.",
            |b| b.state.stats.connection_duration.snapshot(),
        )
    }
}

/// The writer of the families, with each backend's rendered labels.
struct Text<'a, W> {
    out: &'a mut W,
    labelled: Vec<(&'a str, &'a Backend)>,
}

impl<W: Write> Text<'_, W> {
    /// `# HELP`, `# TYPE` and, with a unit, `# UNIT` (the unit is part of the name).
    fn descriptor(
        &mut self,
        name: &str,
        unit: Option<&str>,
        help: &str,
        kind: &str,
    ) -> fmt::Result {
        let out = &mut *self.out;
        for (line, tail) in [("# HELP ", help), ("# TYPE ", kind)] {
            out.write_str(line)?;
            name_unit(out, name, unit)?;
            out.write_str(" ")?;
            out.write_str(tail)?;
            out.write_str("\n")?;
        }
        if let Some(unit) = unit {
            out.write_str("# UNIT ")?;
            name_unit(out, name, Some(unit))?;
            out.write_str(" ")?;
            out.write_str(unit)?;
            out.write_str("\n")?;
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        unit: Option<&str>,
        help: &str,
        value: impl Fn(&Backend) -> u64,
    ) -> fmt::Result {
        self.descriptor(name, unit, help, "counter")?;
        let head = head(name, unit, "_total");
        let mut digits = itoa::Buffer::new();
        for &(labels, backend) in &self.labelled {
            let n = digits.format(value(backend));
            line(self.out, &head, "{", labels, "", n)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Fn(&Backend) -> u64) -> fmt::Result {
        self.descriptor(name, None, help, "gauge")?;
        let mut digits = itoa::Buffer::new();
        for &(labels, backend) in &self.labelled {
            line(
                self.out,
                name,
                "{",
                labels,
                "",
                digits.format(value(backend)),
            )?;
        }
        Ok(())
    }

    /// `sluice_health_checks_total`, a sample per result.
    fn checks(&mut self) -> fmt::Result {
        let name = "sluice_health_checks";
        self.descriptor(
            name,
            None,
            "Active health checks of the backend, by result.",
            "counter",
        )?;
        let head = head(name, None, "_total");
        let mut digits = itoa::Buffer::new();
        for &(labels, backend) in &self.labelled {
            let stats = &backend.state.stats;
            let results = [
                (",result=\"pass\"", &stats.checks_passed),
                (",result=\"fail\"", &stats.checks_failed),
            ];
            for (result, counter) in results {
                line(
                    self.out,
                    &head,
                    "{",
                    labels,
                    result,
                    digits.format(read(counter)),
                )?;
            }
        }
        Ok(())
    }

    /// `sluice_backend_state`: 1 for the backend's state, 0 for the others.
    fn states(&mut self) -> fmt::Result {
        let name = "sluice_backend_state";
        self.descriptor(
            name,
            None,
            "1 for the backend's current state: up, down, draining or disabled.",
            "gauge",
        )?;
        let states = STATES.map(|state| (state, format!(",state=\"{state}\"")));
        for &(labels, backend) in &self.labelled {
            let current = state(backend);
            for (state, label) in &states {
                let n = if *state == current { "1" } else { "0" };
                line(self.out, name, "{", labels, label, n)?;
            }
        }
        Ok(())
    }

    /// A histogram in seconds: `_sum`, `_count`, then the cumulative buckets, `le` first
    /// among the labels (as prometheus-client writes it).
    fn histogram<B: Bounds<N>, const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        read: impl Fn(&Backend) -> Snapshot,
    ) -> fmt::Result {
        let unit = Some("seconds");
        self.descriptor(name, unit, help, "histogram")?;
        let [sum, count, bucket] = ["_sum", "_count", "_bucket"].map(|s| head(name, unit, s));
        // Each bound's `{le="…",` once, not once per backend.
        let mut le: Vec<String> = B::NS
            .iter()
            .map(|&ns| {
                let seconds = ns as f64 / 1e9;
                format!("{{le=\"{}\",", dtoa::Buffer::new().format(seconds))
            })
            .collect();
        le.push("{le=\"+Inf\",".to_owned());
        let mut digits = itoa::Buffer::new();
        let mut float = dtoa::Buffer::new();
        for &(labels, backend) in &self.labelled {
            let snapshot = read(backend);
            line(
                self.out,
                &sum,
                "{",
                labels,
                "",
                float.format(snapshot.sum_seconds),
            )?;
            line(
                self.out,
                &count,
                "{",
                labels,
                "",
                digits.format(snapshot.count),
            )?;
            let mut cumulative = 0;
            for (bound, (_, n)) in le.iter().zip(&snapshot.buckets) {
                cumulative += n;
                line(
                    self.out,
                    &bucket,
                    bound,
                    labels,
                    "",
                    digits.format(cumulative),
                )?;
            }
        }
        Ok(())
    }
}

/// A sample's name: the family's, its unit, and the sample's suffix (`_total`, `_sum` …).
fn head(name: &str, unit: Option<&str>, suffix: &str) -> String {
    match unit {
        Some(unit) => format!("{name}_{unit}{suffix}"),
        None => format!("{name}{suffix}"),
    }
}

/// One sample: `HEAD` `OPEN` (`{`, or `{le="…",`) `LABELS` `MORE` (`,result="…"` or
/// nothing) `} VALUE`.
fn line(
    out: &mut impl Write,
    head: &str,
    open: &str,
    labels: &str,
    more: &str,
    value: &str,
) -> fmt::Result {
    out.write_str(head)?;
    out.write_str(open)?;
    out.write_str(labels)?;
    out.write_str(more)?;
    out.write_str("} ")?;
    out.write_str(value)?;
    out.write_str("\n")
}

/// `NAME` or `NAME_UNIT`.
fn name_unit(out: &mut impl Write, name: &str, unit: Option<&str>) -> fmt::Result {
    out.write_str(name)?;
    if let Some(unit) = unit {
        out.write_str("_")?;
        out.write_str(unit)?;
    }
    Ok(())
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::BackendSpec;
    use crate::balance::BalanceKind;

    fn pool(ports: &[u16]) -> Arc<Pool> {
        let backends = ports
            .iter()
            .map(|&port| Arc::new(Backend::new(BackendSpec::new("10.0.0.1", port), true)))
            .collect();
        Arc::new(Pool::new(BalanceKind::RoundRobin, backends))
    }

    /// The fixture is what prometheus-client's encoder wrote for these backends (through
    /// the collector, before these families were written here).
    #[test]
    fn the_text_is_the_encoders_byte_for_byte() {
        let (web, db) = (pool(&[8080, 8081]), pool(&[5432]));
        let stats = &web.backends()[0].state.stats;
        stats.connect_failures.fetch_add(3, Ordering::Relaxed);
        stats.bytes_to_backend.fetch_add(12_345, Ordering::Relaxed);
        stats.checks_passed.fetch_add(7, Ordering::Relaxed);
        stats.checks_failed.fetch_add(2, Ordering::Relaxed);
        stats.active.fetch_add(4, Ordering::Relaxed);
        stats.connect_duration.observe(Duration::from_micros(300));
        stats.connect_duration.observe(Duration::from_millis(30));
        stats.connection_duration.observe(Duration::from_secs(2));
        stats
            .connection_duration
            .observe(Duration::from_secs(100_000));
        let families = BackendFamilies::new(vec![("web".into(), web), ("db".into(), db)]);
        let mut out = String::new();
        families.write(&mut out).expect("write");
        let expected = include_str!("testdata/backend-families.txt");
        for (n, (got, want)) in out.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", n + 1);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn no_backends_still_describe_every_family() {
        let mut out = String::new();
        BackendFamilies::new(Vec::new())
            .write(&mut out)
            .expect("write");
        assert_eq!(out.matches("# TYPE ").count(), 13, "{out}");
        assert!(out.contains("# UNIT sluice_connection_duration_seconds seconds\n"));
        assert!(!out.contains('{'), "{out}");
    }
}
