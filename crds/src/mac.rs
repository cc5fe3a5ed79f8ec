//! Ethernet MAC addresses as the API writes them (`02:42:ac:14:00:01`) and as the kernel takes
//! them (six bytes), so that a MAC is parsed once where it enters and formatted once where it
//! leaves.

use std::{fmt, str::FromStr};

use crate::net::NetError;

/// A 48-bit Ethernet address. `Display` writes the lowercase colon form
/// (`02:42:ac:14:00:01`); `FromStr` takes exactly that form, in either case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// The address made of `octets`, first octet first.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// The six octets, as netlink takes them.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether an interface may carry it: neither the group bit (multicast, broadcast) of the
    /// first octet nor all zeros, which the kernel refuses as a device address.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> Self {
        mac.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = NetError;

    /// Parses six colon-separated two-character hex pairs; anything else (other separators, a
    /// missing or extra pair, a pair of one or three digits) is [`NetError::InvalidMac`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || NetError::InvalidMac {
            field: "mac",
            value: s.to_owned(),
        };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self(octets))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn round_trips_the_colon_form() {
        let mac: Mac = "02:42:AC:14:00:01".parse().unwrap();
        assert_eq!(mac.octets(), [0x02, 0x42, 0xac, 0x14, 0x00, 0x01]);
        assert_eq!(mac.to_string(), "02:42:ac:14:00:01");
        assert_eq!(Mac::from(mac.octets()), mac);
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "02:42:ac:14:00",
            "02:42:ac:14:00:01:02",
            "zz:42:ac:14:00:01",
            "02-42-ac-14-00-01",
            "2:42:ac:14:00:01",
            "",
        ] {
            assert!(
                matches!(bad.parse::<Mac>(), Err(NetError::InvalidMac { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn unicast_is_neither_group_nor_zero() {
        assert!(Mac::new([2, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!Mac::new([3, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!Mac::new([0xff; 6]).is_unicast());
        assert!(!Mac::default().is_unicast());
    }
}
