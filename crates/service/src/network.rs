//! Service networking: one Linux bridge per server (`hgr<id>`, a /24 of 10.213.0.0/16 claimed
//! under `/run/hangar-subnets/`), and per instance a named network namespace
//! (`/run/netns/hgr-<id>-<n>`) joined to it by a veth pair, with its own address and a default
//! route through the bridge. Configured with iproute2 (`ip -batch`), two processes per instance.
//!
//! An nftables table per server (`inet hangar_<id>`) keeps instances off the host: nothing an
//! instance opens towards the host is accepted (replies to the host's own connections, e.g.
//! the gateway's and the probes', are), and instances whose service has no egress cannot be
//! forwarded anywhere; the others leave through masquerade.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::ServiceError;

/// The port on the bridge's address where instances reach the services of their namespace by
/// name (`http://NAME/`).
pub const INTERNAL_PORT: u16 = 80;

/// An instance's place on the bridge.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Attachment {
    /// The namespace file runc joins.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Network {
    sid: String,
    bridge: String,
    subnet: tokio::sync::OnceCell<[u8; 3]>,
    /// Addresses in use, and the last one handed out (the next search starts after it, so a
    /// freed address is reused last).
    used: Mutex<(HashSet<u8>, u8)>,
    ready: tokio::sync::watch::Sender<Option<Ipv4Addr>>,
}

async fn nft(script: &str) -> Result<(), ServiceError> {
    hangar_container::netcmd::nft(script).await.map_err(|e| ServiceError::Network(e.to_string()))
}

async fn ip(args: &[&str], batch: &str) -> Result<(), ServiceError> {
    hangar_container::netcmd::ip(args, batch).await.map_err(|e| ServiceError::Network(e.to_string()))
}

impl Network {
    pub fn new(sid: &str) -> Network {
        Network {
            sid: sid.to_string(),
            bridge: format!("hgr{sid}"),
            subnet: tokio::sync::OnceCell::new(),
            used: Mutex::new((HashSet::new(), 1)),
            ready: tokio::sync::watch::channel(None).0,
        }
    }

    /// Tells the bridge's address once the bridge exists.
    pub fn bridge_ready(&self) -> tokio::sync::watch::Receiver<Option<Ipv4Addr>> {
        self.ready.subscribe()
    }

    /// The bridge's own address (the instances' gateway), once the bridge exists.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.subnet.get().map(|s| Ipv4Addr::new(s[0], s[1], s[2], 1))
    }

    /// Claims a free /24 for this server: the claim file names the server, and a claim whose
    /// bridge no longer exists is stale and may be taken.
    fn claim_subnet(&self) -> Result<[u8; 3], ServiceError> {
        let x = hangar_container::subnets::claim([10, 213], "services", &self.sid).map_err(|e| ServiceError::Network(e.to_string()))?;
        Ok([10, 213, x])
    }

    async fn ensure_bridge(&self) -> Result<[u8; 3], ServiceError> {
        self.subnet
            .get_or_try_init(|| async {
                let s = self.claim_subnet()?;
                let b = &self.bridge;
                let _ = ip(&[], &format!("link del {b}\n")).await;
                ip(&[], &format!("link add {b} type bridge\naddr add {}.{}.{}.1/24 dev {b}\nlink set {b} up\n", s[0], s[1], s[2])).await?;
                let t = self.table();
                let net = format!("{}.{}.{}.0/24", s[0], s[1], s[2]);
                let gw = format!("{}.{}.{}.1", s[0], s[1], s[2]);
                nft(&format!(
                    "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n\
                     set no_egress {{ type ipv4_addr; }}\n\
                     chain input {{ type filter hook input priority filter; policy accept;\n\
                       iifname \"{b}\" ct state established,related accept\n\
                       iifname \"{b}\" ip daddr {gw} tcp dport {INTERNAL_PORT} accept\n\
                       iifname \"{b}\" drop\n}}\n\
                     chain forward {{ type filter hook forward priority filter; policy accept;\n\
                       iifname \"{b}\" ip saddr @no_egress drop\n\
                       oifname \"{b}\" ip daddr @no_egress ct state new drop\n}}\n\
                     chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
                       ip saddr {net} oifname != \"{b}\" masquerade\n}}\n}}\n"
                ))
                .await?;
                // Forwarding is what lets instances with egress out (as Docker does).
                if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
                    tracing::warn!("enabling IPv4 forwarding for service egress: {e}");
                }
                let _ = self.ready.send(Some(Ipv4Addr::new(s[0], s[1], s[2], 1)));
                Ok(s)
            })
            .await
            .copied()
    }

    fn allocate(&self) -> Result<u8, ServiceError> {
        let mut guard = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let (used, last) = &mut *guard;
        // Hosts 2..=254; the search starts at the one after `last`.
        let first = (usize::from(*last) + 252) % 253;
        let host = (0..253)
            .map(|i| ((first + i) % 253 + 2) as u8)
            .find(|h| !used.contains(h))
            .ok_or_else(|| ServiceError::Network("the service bridge has no free address (253 instances)".into()))?;
        used.insert(host);
        *last = host;
        Ok(host)
    }

    fn table(&self) -> String {
        format!("hangar_{}", self.sid)
    }

    /// The name of instance `n`'s network namespace.
    pub fn netns_name(&self, n: u64) -> String {
        format!("hgr-{}-{n}", self.sid)
    }

    /// A new network namespace on the bridge for instance `n`; without `egress` nothing from
    /// it is forwarded beyond the bridge.
    pub async fn attach(&self, n: u64, egress: bool) -> Result<Attachment, ServiceError> {
        let s = self.ensure_bridge().await?;
        let host = self.allocate()?;
        let netns = self.netns_name(n);
        // Host side: ≤ 15 characters.
        let veth = format!("hgv{}{n:x}", &self.sid[..6.min(self.sid.len())]);
        let ipaddr = Ipv4Addr::new(s[0], s[1], s[2], host);
        // The host may still map this address to an earlier instance's MAC: until that entry
        // goes stale (up to tens of seconds) nothing would reach the new instance.
        let _ = ip(&[], &format!("neigh flush to {ipaddr} dev {}\n", self.bridge)).await;
        let result = async {
            ip(&[], &format!("netns add {netns}\nlink add {veth} type veth peer name eth0 netns {netns}\nlink set {veth} master {} up\n", self.bridge)).await?;
            ip(
                &["-n", &netns],
                &format!("addr add {ipaddr}/24 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {}.{}.{}.1\n", s[0], s[1], s[2]),
            )
            .await?;
            if !egress {
                nft(&format!("add element inet {} no_egress {{ {ipaddr} }}\n", self.table())).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = ip(&[], &format!("netns del {netns}\n")).await;
            self.release(host);
            return Err(e);
        }
        Ok(Attachment { netns, ip: ipaddr })
    }

    fn release(&self, host: u8) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).0.remove(&host);
    }

    /// Removes an instance's namespace (its veth goes with it) and frees its address.
    pub async fn detach(&self, a: &Attachment) {
        if let Err(e) = ip(&[], &format!("netns del {}\n", a.netns)).await {
            tracing::warn!("removing network namespace {}: {e}", a.netns);
        }
        let _ = ip(&[], &format!("neigh flush to {} dev {}\n", a.ip, self.bridge)).await;
        // Harmless if it was never there.
        let _ = nft(&format!("delete element inet {} no_egress {{ {} }}\n", self.table(), a.ip)).await;
        self.release(a.ip.octets()[3]);
    }

    /// Removes this server's namespaces that `wanted` does not keep (the reconcile loop).
    pub async fn remove_unwanted(&self, wanted: impl Fn(&str) -> bool) {
        let prefix = format!("hgr-{}-", self.sid);
        let mut batch = String::new();
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !wanted(&name) {
                tracing::warn!("reconcile: removing network namespace {name}, which no instance owns");
                batch.push_str(&format!("netns del {name}\n"));
            }
        }
        if !batch.is_empty() {
            let _ = ip(&["-force"], &batch).await;
        }
    }

    /// Removes every namespace, veth and the bridge this server made (recovery and shutdown).
    pub async fn remove_all(&self) {
        let prefix = format!("hgr-{}-", self.sid);
        let mut batch = String::new();
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                batch.push_str(&format!("netns del {name}\n"));
            }
        }
        if std::path::Path::new("/sys/class/net").join(&self.bridge).exists() {
            batch.push_str(&format!("link del {}\n", self.bridge));
        }
        if !batch.is_empty() {
            let _ = ip(&["-force"], &batch).await;
        }
        let t = self.table();
        let _ = nft(&format!("add table inet {t}\ndelete table inet {t}\n")).await;
        hangar_container::subnets::release("services", &self.sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_address_is_handed_out_last() {
        let n = Network::new("0123456789");
        assert_eq!((n.allocate().unwrap(), n.allocate().unwrap(), n.allocate().unwrap()), (2, 3, 4));
        n.release(3);
        assert_eq!(n.allocate().unwrap(), 5, "not the address just freed");
        let rest: Vec<u8> = (0..249).map(|_| n.allocate().unwrap()).collect();
        assert_eq!((rest[0], rest[248]), (6, 254));
        // Around: the one free address left.
        assert_eq!(n.allocate().unwrap(), 3);
        assert!(n.allocate().is_err(), "253 in use");
    }
}
