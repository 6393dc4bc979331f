//! `kind = "srv"`: DNS SRV records asked of `srv_lookup_server`. Each record names a
//! target and a port; the target's addresses come from the answer's additional section
//! when the server put them there, else from A/AAAA queries to the same server.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tracing::debug;

use super::dns::{address_of, exchange, fqdn};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::SrvParams;

/// The `srv` source.
pub struct SrvSource {
    params: SrvParams,
}

impl SrvSource {
    pub fn new(params: &SrvParams) -> Self {
        SrvSource {
            params: params.clone(),
        }
    }

    async fn lookup(&self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let SrvParams {
            server, protocol, ..
        } = self.params;
        let name = fqdn(&self.params.pattern)?;
        let answer = exchange(server, protocol, &name, RecordType::SRV).await?;
        let mut known: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        for record in answer.additionals() {
            if let Some(ip) = address_of(record) {
                known
                    .entry(record.name().to_lowercase())
                    .or_default()
                    .push(ip);
            }
        }
        let mut out = Vec::new();
        for record in answer.answers() {
            let RData::SRV(srv) = record.data() else {
                continue;
            };
            // A target of "." says the service is not offered here (RFC 2782).
            if srv.target().is_root() {
                continue;
            }
            let target = srv.target().to_lowercase();
            let ips = match known.get(&target) {
                Some(ips) => ips.clone(),
                None => {
                    debug!(%target, "SRV target not in the additional section; asking for it");
                    let mut ips = Vec::new();
                    let mut failure = None;
                    for rtype in [RecordType::A, RecordType::AAAA] {
                        match exchange(server, protocol, &target, rtype).await {
                            Ok(found) => ips.extend(found.answers().iter().filter_map(address_of)),
                            Err(e) => failure = Some(e),
                        }
                    }
                    // One record type refused is not a failure when the other answers.
                    if let (Some(e), true) = (failure, ips.is_empty()) {
                        return Err(e);
                    }
                    known.insert(target.clone(), ips.clone());
                    ips
                }
            };
            if ips.is_empty() {
                return Err(DiscoveryError::Invalid(format!(
                    "SRV target {target} has no address"
                )));
            }
            for ip in ips {
                let mut spec = BackendSpec::new(ip.to_string(), srv.port());
                // SRV weight 0 means "rarely"; Sluice's weights start at 1.
                spec.weight = u32::from(srv.weight()).max(1);
                spec.priority = u32::from(srv.priority());
                out.push(spec);
            }
        }
        if out.iter().any(|s| s.port == 0) {
            return Err(DiscoveryError::Invalid("an SRV record has port 0".into()));
        }
        // Sorted, so that the same records in another order are the same list.
        out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        Ok(out)
    }
}

impl Source for SrvSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.lookup())
    }
}
