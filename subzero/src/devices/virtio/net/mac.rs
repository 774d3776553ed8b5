//! MAC addresses: parsing, checking, formatting, and random ones.

use std::io;

use super::NetError;

/// Formats `mac` as `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses a MAC address written as six colon-separated hex bytes, e.g.
/// `52:54:00:12:34:56`. Multicast (and broadcast) and all-zero addresses
/// are refused: a network card needs a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = |reason| NetError::InvalidMac {
        mac: s.to_string(),
        reason,
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| bad("expected six hex bytes like 52:54:00:12:34:56"))?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("expected six hex bytes like 52:54:00:12:34:56"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad("not a hex byte"))?;
    }
    if parts.next().is_some() {
        return Err(bad("expected six hex bytes like 52:54:00:12:34:56"));
    }
    check_mac(&mac).map_err(bad)?;
    Ok(mac)
}

/// Refuses what cannot be a network card's address.
pub(super) fn check_mac(mac: &[u8; 6]) -> Result<(), &'static str> {
    if mac[0] & 1 != 0 {
        return Err("a multicast address (the low bit of the first byte is set); a network card needs a unicast one");
    }
    if mac == &[0; 6] {
        return Err("the all-zero address");
    }
    Ok(())
}

/// A random locally administered unicast address.
pub(super) fn random_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    crate::devices::virtio::rng::host_random(&mut mac)?;
    mac[0] = (mac[0] & !0x03) | 0x02;
    Ok(mac)
}
