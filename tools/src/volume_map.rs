//! `fabricctl volume map`: how a hypervisor host reaches a volume through a gateway, as an NBD
//! URI, a QEMU `-blockdev`/`-device` pair and a libvirt `<disk>` element. Each asks the client
//! to reconnect for `RECONNECT_DELAY_S` seconds, so that a gateway restart (an upgrade, a
//! crash) stalls the guest's IO instead of failing it.

use std::fmt::Write;

/// How long QEMU keeps a request waiting for the gateway to come back, in seconds.
pub const RECONNECT_DELAY_S: u32 = 30;

/// The ways to name one volume on one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMap {
    pub uri: String,
    pub qemu: String,
    pub libvirt: String,
}

/// A gateway address as `HOST:PORT` (an IPv6 host in brackets), split into host and port.
pub fn split_gateway(gateway: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = gateway
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("gateway {gateway:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("gateway {gateway:?} has a bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "gateway {gateway:?} has no host");
    Ok((host.to_owned(), port))
}

/// The URI and snippets of `volume` served by the gateway at `host`:`port`.
pub fn volume_map(volume: &str, host: &str, port: u16) -> VolumeMap {
    let uri_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let uri = format!("nbd://{uri_host}:{port}/{volume}");
    // Node names must start with a letter and hold only letters, digits, '-', '.' and '_'.
    let node: String = format!("fabric-{volume}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let qemu = format!(
        "-blockdev driver=nbd,node-name={node},server.type=inet,server.host={host},server.port={port},export={volume},reconnect-delay={RECONNECT_DELAY_S} \
         -device virtio-blk-pci,drive={node}"
    );
    let mut libvirt = String::new();
    let _ = writeln!(libvirt, "<disk type='network' device='disk'>");
    let _ = writeln!(
        libvirt,
        "  <driver name='qemu' type='raw' cache='none' io='native'/>"
    );
    let _ = writeln!(libvirt, "  <source protocol='nbd' name='{}'>", xml(volume));
    let _ = writeln!(libvirt, "    <host name='{}' port='{port}'/>", xml(host));
    let _ = writeln!(libvirt, "    <reconnect delay='{RECONNECT_DELAY_S}'/>");
    let _ = writeln!(libvirt, "  </source>");
    let _ = writeln!(libvirt, "  <target dev='vdb' bus='virtio'/>");
    let _ = write!(libvirt, "</disk>");
    VolumeMap { uri, qemu, libvirt }
}

/// `s` escaped for an XML attribute in single quotes.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_gateway("127.0.0.1:10809").unwrap(),
            ("127.0.0.1".into(), 10809)
        );
        assert_eq!(split_gateway("[::1]:10809").unwrap(), ("::1".into(), 10809));
        assert!(split_gateway("127.0.0.1").is_err());
        assert!(split_gateway("127.0.0.1:port").is_err());
        assert!(split_gateway(":10809").is_err());
    }

    #[test]
    fn snippets_name_the_volume_and_the_gateway() {
        let m = volume_map("vm1", "127.0.0.1", 10809);
        assert_eq!(m.uri, "nbd://127.0.0.1:10809/vm1");
        assert!(
            m.qemu
                .contains("server.host=127.0.0.1,server.port=10809,export=vm1")
        );
        assert!(m.qemu.contains("reconnect-delay=30"));
        assert!(m.qemu.ends_with("-device virtio-blk-pci,drive=fabric-vm1"));
        assert!(m.libvirt.contains("<source protocol='nbd' name='vm1'>"));
        assert!(m.libvirt.contains("<host name='127.0.0.1' port='10809'/>"));
        let v6 = volume_map("a:b", "::1", 1);
        assert_eq!(v6.uri, "nbd://[::1]:1/a:b");
        assert!(v6.qemu.contains("node-name=fabric-a_b,"));
    }
}
