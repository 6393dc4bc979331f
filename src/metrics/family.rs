//! Writing one metric family: its descriptor, then a sample per label set, whatever the
//! family is about. The collector says what to read; this says how it is written.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// A family's descriptor; a unit becomes part of the name.
pub(super) struct Meta {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
}

impl Meta {
    pub(super) fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, MetricType::Counter)
    }

    pub(super) fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, MetricType::Gauge)
    }

    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Meta {
            name,
            help,
            unit: None,
            kind,
        }
    }

    pub(super) fn unit(self, unit: Unit) -> Self {
        Meta {
            unit: Some(unit),
            ..self
        }
    }
}

/// One sample's value.
pub(super) enum Value {
    Counter(u64),
    Gauge(u64),
}

impl Value {
    fn encode(&self, metric: &mut MetricEncoder) -> fmt::Result {
        match self {
            Value::Counter(v) => metric.encode_counter::<NoLabelSet, u64, u64>(v, None),
            Value::Gauge(v) => metric.encode_gauge(v),
        }
    }
}

/// Writes one family: its descriptor, then one sample per label set.
pub(super) fn family<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    meta: Meta,
    samples: impl IntoIterator<Item = (S, Value)>,
) -> fmt::Result {
    let mut metric =
        encoder.encode_descriptor(meta.name, meta.help, meta.unit.as_ref(), meta.kind)?;
    for (labels, value) in samples {
        value.encode(&mut metric.encode_family(&labels)?)?;
    }
    Ok(())
}
