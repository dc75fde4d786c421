//! Networking for sandboxes whose policy allows anything. Each gets a network namespace
//! (`/run/netns/hsb-<sid>-<slot>`) joined to the host by a veth pair on a /30 of a /24 this
//! server claims in 10.215.0.0/16; gVisor's own network stack takes the namespace's interface
//! over (`runsc --network=sandbox`), so the sandbox's sockets never reach the host kernel.
//!
//! An nftables table per server (`inet hangar_sb_<sid>`) lets through only what a sandbox's
//! allow-list names (its address, the destination address, protocol and port): new
//! connections into a sandbox, between sandboxes, to the host or anywhere else are dropped;
//! allowed ones leave through masquerade. Names in the allow-list are resolved on the host
//! when the sandbox starts and written to its `/etc/hosts`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use hangar_container::netcmd::{ip, nft};

use crate::SandboxError;

/// Sandboxes with a network per claimed /24 (a /30 each).
pub const SLOTS: u8 = 64;

fn net_err(e: hangar_container::JailError) -> SandboxError {
    SandboxError::Runtime(format!("sandbox network: {e}"))
}

/// A sandbox's place on the host's network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub netns: String,
    pub addr: Ipv4Addr,
    slot: u8,
    /// The nftables set elements that let its traffic through.
    allowed: Vec<String>,
    /// `/etc/hosts` for the sandbox: loopback and the allow-list's names.
    pub hosts: String,
}

impl Attachment {
    /// The namespace file runsc joins.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// See the module docs.
pub struct Network {
    sid: String,
    /// The third octet of the claimed 10.215.X.0/24.
    subnet: tokio::sync::OnceCell<u8>,
    used: Mutex<HashSet<u8>>,
}

/// An allow-list resolved: `(address, port)` pairs (`None`: any port) and the names' lines
/// for `/etc/hosts`.
pub async fn resolve(allow: &[String]) -> Result<(Vec<(Ipv4Addr, Option<u16>)>, String), SandboxError> {
    let mut pairs = Vec::new();
    let mut hosts = String::from("127.0.0.1\tlocalhost\n");
    for entry in allow {
        let (host, port) = hangar_api::sandboxes::allow_entry(entry).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            pairs.push((ip, port));
            continue;
        }
        let found: Vec<Ipv4Addr> = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| SandboxError::Invalid(format!("network.allow: `{host}` does not resolve on this server ({e})")))?
            .filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let Some(first) = found.first() else {
            return Err(SandboxError::Invalid(format!("network.allow: `{host}` has no IPv4 address")));
        };
        hosts.push_str(&format!("{first}\t{host}\n"));
        pairs.extend(found.iter().map(|ip| (*ip, port)));
    }
    Ok((pairs, hosts))
}

impl Network {
    pub fn new(sid: &str) -> Network {
        Network { sid: sid.to_string(), subnet: tokio::sync::OnceCell::new(), used: Mutex::new(HashSet::new()) }
    }

    fn table(&self) -> String {
        format!("hangar_sb_{}", self.sid)
    }

    /// Host-side interfaces start with this (≤ 15 characters with the slot).
    fn veth_prefix(&self) -> String {
        format!("hs{}", &self.sid[..6.min(self.sid.len())])
    }

    /// Claims a free /24 of 10.215.0.0/16 (`hangar_container::subnets`).
    fn claim(&self) -> Result<u8, SandboxError> {
        hangar_container::subnets::claim([10, 215], "sandboxes", &self.sid).map_err(|e| match e {
            hangar_container::JailError::Network(m) if m.starts_with("no free") => SandboxError::Unavailable(m),
            e => net_err(e),
        })
    }

    /// The claimed /24 and this server's nftables table, made at first use.
    async fn ensure(&self) -> Result<u8, SandboxError> {
        self.subnet
            .get_or_try_init(|| async {
                let x = self.claim()?;
                let (t, v) = (self.table(), self.veth_prefix());
                nft(&format!(
                    "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n\
                     set allow {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; }}\n\
                     set allow_any {{ type ipv4_addr . ipv4_addr; }}\n\
                     chain input {{ type filter hook input priority filter; policy accept;\n\
                       iifname \"{v}*\" ct state established,related accept\n\
                       iifname \"{v}*\" ip saddr . ip daddr . meta l4proto . th dport @allow accept\n\
                       iifname \"{v}*\" ip saddr . ip daddr @allow_any accept\n\
                       iifname \"{v}*\" drop\n}}\n\
                     chain forward {{ type filter hook forward priority filter; policy accept;\n\
                       oifname \"{v}*\" ct state established,related accept\n\
                       oifname \"{v}*\" drop\n\
                       iifname \"{v}*\" ip saddr . ip daddr . meta l4proto . th dport @allow accept\n\
                       iifname \"{v}*\" ip saddr . ip daddr @allow_any accept\n\
                       iifname \"{v}*\" drop\n}}\n\
                     chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
                       ip saddr 10.215.{x}.0/24 oifname != \"{v}*\" masquerade\n}}\n}}\n"
                ))
                .await
                .map_err(net_err)?;
                if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
                    tracing::warn!("enabling IPv4 forwarding for sandbox networks: {e}");
                }
                Ok(x)
            })
            .await
            .copied()
    }

    /// A namespace for a sandbox, with what `allowed` names let through.
    pub async fn attach(&self, allowed: &[(Ipv4Addr, Option<u16>)], hosts: String) -> Result<Attachment, SandboxError> {
        let x = self.ensure().await?;
        let slot = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (0..SLOTS)
                .find(|s| !used.contains(s))
                .ok_or_else(|| SandboxError::Unavailable(format!("this server already runs {SLOTS} sandboxes with network access")))?;
            used.insert(slot);
            slot
        };
        let (gw, addr) = (Ipv4Addr::new(10, 215, x, slot * 4 + 1), Ipv4Addr::new(10, 215, x, slot * 4 + 2));
        let netns = format!("hsb-{}-{slot}", self.sid);
        let veth = format!("{}{slot:02x}", self.veth_prefix());
        let mut elements = Vec::new();
        for (ip, port) in allowed {
            match port {
                Some(p) => elements.extend([format!("{addr} . {ip} . tcp . {p}"), format!("{addr} . {ip} . udp . {p}")]),
                None => elements.push(format!("{addr} . {ip}")),
            }
        }
        let attachment = Attachment { netns: netns.clone(), addr, slot, allowed: elements, hosts };
        let result = async {
            let _ = ip(&["-force"], &format!("netns del {netns}\nlink del {veth}\n")).await;
            ip(&[], &format!("netns add {netns}\nlink add {veth} type veth peer name eth0 netns {netns}\naddr add {gw}/30 dev {veth}\nlink set {veth} up\n"))
                .await?;
            ip(&["-n", &netns], &format!("addr add {addr}/30 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {gw}\n")).await?;
            if let Some(script) = self.elements("add", &attachment) {
                nft(&script).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.detach(&attachment).await;
            return Err(net_err(e));
        }
        Ok(attachment)
    }

    /// `add` or `delete` of the attachment's set elements, if it has any.
    fn elements(&self, verb: &str, a: &Attachment) -> Option<String> {
        let t = self.table();
        let (exact, any): (Vec<&String>, Vec<&String>) = a.allowed.iter().partition(|e| e.contains(" . tcp . ") || e.contains(" . udp . "));
        let mut script = String::new();
        if !exact.is_empty() {
            script.push_str(&format!("{verb} element inet {t} allow {{ {} }}\n", exact.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        }
        if !any.is_empty() {
            script.push_str(&format!("{verb} element inet {t} allow_any {{ {} }}\n", any.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        }
        (!script.is_empty()).then_some(script)
    }

    /// Removes a sandbox's namespace (its veth goes with it) and rules, and frees its slot.
    pub async fn detach(&self, a: &Attachment) {
        let _ = ip(&["-force"], &format!("netns del {}\n", a.netns)).await;
        if let Some(script) = self.elements("delete", a) {
            let _ = nft(&script).await;
        }
        self.used.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.slot);
    }

    /// Removes every namespace, interface and rule of this server's sandboxes, and its claim
    /// (start and shutdown).
    pub async fn remove_all(&self) {
        let prefix = format!("hsb-{}-", self.sid);
        let mut batch = String::new();
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                batch.push_str(&format!("netns del {name}\n"));
            }
        }
        if !batch.is_empty() {
            let _ = ip(&["-force"], &batch).await;
        }
        let t = self.table();
        let _ = nft(&format!("add table inet {t}\ndelete table inet {t}\n")).await;
        hangar_container::subnets::release("sandboxes", &self.sid);
    }
}
