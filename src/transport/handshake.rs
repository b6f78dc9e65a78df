//! Whether a new connection has finished its handshake, judged from the bytes it sends:
//! until it has, it holds a connection slot without being a client yet, so it gets a
//! deadline (`--handshake-timeout-ms`, counted from accept) and is closed past it.
//!
//! Plaintext: done once the HTTP/2 preface and the client's first SETTINGS frame have
//! arrived, exactly. TLS: the bytes are encrypted, so the record layer is read instead:
//! done at the client's second application-data record. Every well-behaved HTTP/2 client
//! sends at least two by then (TLS 1.3: its Finished, then the preface and SETTINGS;
//! TLS 1.2: the preface and SETTINGS, then the ACK of the server's SETTINGS), and a client
//! that stops before that has not finished its handshake.

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and one frame header.
const PLAIN_HEAD: usize = PREFACE.len() + 9;
/// The HTTP/2 SETTINGS frame type.
const SETTINGS: u8 = 0x4;
/// TLS record content types.
const TLS_HANDSHAKE: u8 = 22;
const TLS_APPLICATION_DATA: u8 = 23;

/// Where a connection's handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Nothing read yet.
    Start,
    /// Plaintext: the first bytes, then how much of the SETTINGS payload is still due.
    Plain {
        /// The preface and the first frame header, as far as read.
        head: Vec<u8>,
        /// SETTINGS payload bytes still due, once the header is read.
        payload_left: Option<usize>,
    },
    /// TLS: the record header being read, the body bytes still to skip, and how many
    /// application-data records have been seen.
    Tls {
        /// The current record's header, as far as read.
        header: Vec<u8>,
        /// Bytes of the current record's body still to skip.
        body_left: usize,
        /// Application-data records seen.
        application_records: u8,
    },
    /// Done: the connection is a client.
    Done,
    /// Not HTTP/2 (nor TLS): it never will be done, and the deadline closes it.
    Never,
}

impl Handshake {
    /// Reads the next bytes the client sent; whether the handshake is now done.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self {
                Self::Done => return true,
                Self::Never => return false,
                Self::Start => {
                    *self = if bytes.first() == Some(&TLS_HANDSHAKE) {
                        Self::Tls {
                            header: Vec::with_capacity(5),
                            body_left: 0,
                            application_records: 0,
                        }
                    } else {
                        Self::Plain {
                            head: Vec::with_capacity(PLAIN_HEAD),
                            payload_left: None,
                        }
                    };
                }
                Self::Plain { head, payload_left } => match payload_left {
                    None => {
                        let take = (PLAIN_HEAD - head.len()).min(bytes.len());
                        let (now, rest) = bytes.split_at(take);
                        head.extend_from_slice(now);
                        bytes = rest;
                        if head.len() == PLAIN_HEAD {
                            match settings_length(head) {
                                Some(0) => *self = Self::Done,
                                Some(length) => *payload_left = Some(length),
                                None => *self = Self::Never,
                            }
                        }
                    }
                    Some(left) => {
                        let take = (*left).min(bytes.len());
                        *left -= take;
                        bytes = bytes.get(take..).unwrap_or_default();
                        if *left == 0 {
                            *self = Self::Done;
                        }
                    }
                },
                Self::Tls {
                    header,
                    body_left,
                    application_records,
                } => {
                    if *body_left > 0 {
                        let take = (*body_left).min(bytes.len());
                        *body_left -= take;
                        bytes = bytes.get(take..).unwrap_or_default();
                        continue;
                    }
                    let take = (5 - header.len()).min(bytes.len());
                    let (now, rest) = bytes.split_at(take);
                    header.extend_from_slice(now);
                    bytes = rest;
                    if let [kind, _, _, high, low] = header[..] {
                        if kind == TLS_APPLICATION_DATA {
                            *application_records += 1;
                            if *application_records >= 2 {
                                *self = Self::Done;
                                continue;
                            }
                        }
                        *body_left = usize::from(u16::from_be_bytes([high, low]));
                        header.clear();
                    }
                }
            }
        }
        matches!(self, Self::Done)
    }
}

/// The payload length of the SETTINGS frame after the preface, or `None` when `head` is
/// not the preface followed by a SETTINGS frame (not an ACK).
fn settings_length(head: &[u8]) -> Option<usize> {
    let (preface, frame) = head.split_at_checked(PREFACE.len())?;
    if preface != PREFACE {
        return None;
    }
    match frame {
        [a, b, c, kind, flags, ..] if *kind == SETTINGS && flags & 1 == 0 => {
            Some(usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: &[u8]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
        bytes.extend_from_slice(&len[1..]);
        bytes.extend_from_slice(&[SETTINGS, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn plaintext_is_done_with_the_preface_and_settings_in_any_pieces() {
        let bytes = settings(&[0, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0, 0]);
        for piece in [1, 5, 24, 33, bytes.len()] {
            let mut handshake = Handshake::Start;
            let mut done_at = None;
            for (i, chunk) in bytes.chunks(piece).enumerate() {
                if handshake.feed(chunk) && done_at.is_none() {
                    done_at = Some(i);
                }
            }
            assert_eq!(done_at, Some(bytes.len().div_ceil(piece) - 1), "{piece}");
        }
        // The preface alone, or most of the SETTINGS, is not done.
        let mut handshake = Handshake::Start;
        assert!(!handshake.feed(PREFACE));
        assert!(!handshake.feed(&bytes[24..bytes.len() - 1]));
        assert!(Handshake::Start.feed(&settings(&[])));
    }

    #[test]
    fn anything_but_http2_is_never_done() {
        let mut http1 = Handshake::Start;
        assert!(!http1.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore and more bytes"));
        assert_eq!(http1, Handshake::Never);
        let mut ack_first = settings(&[]);
        ack_first[28] = 1;
        assert!(!Handshake::Start.feed(&ack_first));
    }

    #[test]
    fn tls_is_done_at_the_second_application_data_record() {
        let record = |kind: u8, body: usize| {
            let mut bytes = vec![kind, 3, 3];
            bytes.extend_from_slice(&u16::try_from(body).expect("small").to_be_bytes());
            bytes.extend(std::iter::repeat_n(kind, body));
            bytes
        };
        let mut flight = record(TLS_HANDSHAKE, 300);
        flight.extend(record(20, 1));
        flight.extend(record(TLS_APPLICATION_DATA, 53));
        let mut handshake = Handshake::Start;
        for chunk in flight.chunks(7) {
            assert!(
                !handshake.feed(chunk),
                "one application record is not enough"
            );
        }
        assert!(handshake.feed(&record(TLS_APPLICATION_DATA, 90)[..5]));
    }
}
