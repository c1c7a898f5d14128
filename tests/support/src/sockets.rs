//! The TCP sockets of this network namespace, as `/proc/net/tcp` lists them: how many are open
//! to an address, and in which state, to check that the gateway keeps its connections to a dead
//! host within bounds.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Sockets to one address, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sockets {
    pub established: usize,
    /// Handshakes under way (SYN sent, no answer yet).
    pub connecting: usize,
    /// Every other state (closing, time-wait and the like).
    pub other: usize,
}

impl Sockets {
    /// Established or connecting: the sockets that hold a connection slot.
    pub fn open(&self) -> usize {
        self.established + self.connecting
    }
}

/// The sockets whose remote end is `to`, leaving out those that come from `to`'s own IP (a
/// backend's connections to itself).
pub fn to(to: SocketAddrV4) -> std::io::Result<Sockets> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(count(&table, to))
}

fn count(table: &str, to: SocketAddrV4) -> Sockets {
    let mut sockets = Sockets::default();
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(remote), Some(state)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (Some(local), Some(remote)) = (parse(local), parse(remote)) else {
            continue;
        };
        if remote != to || local.ip() == to.ip() {
            continue;
        }
        match state {
            "01" => sockets.established += 1,
            "02" => sockets.connecting += 1,
            _ => sockets.other += 1,
        }
    }
    sockets
}

/// `0100007F:1F90`: the address as the kernel prints it (the IP in host byte order, little
/// endian here), and the port.
fn parse(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.swap_bytes()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_sockets_to_an_address_by_state_leaving_out_its_own() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:A000 0200007F:1F90 01 00000000:00000000\n\
   1: 0100007F:A001 0200007F:1F90 02 00000000:00000000\n\
   2: 0100007F:A002 0200007F:1F90 06 00000000:00000000\n\
   3: 0200007F:A003 0200007F:1F90 01 00000000:00000000\n\
   4: 0100007F:A004 0300007F:1F90 01 00000000:00000000\n";
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 8080);
        assert_eq!(
            count(table, to),
            Sockets {
                established: 1,
                connecting: 1,
                other: 1
            }
        );
    }
}
