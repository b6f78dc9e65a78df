//! The cache's table: 64-byte entries keyed by 8 bytes of their token's hash, and each
//! session's entries chained through the entries themselves, so that finding a session's
//! tokens costs one 8-byte index slot per session.

use crate::domain::view::SessionView;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The map key of a token hash: its first 8 bytes, never 0 (0 ends a session's chain).
/// Two tokens may share one; the whole hash decides a hit.
pub(super) fn token_key(hash: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first) | 1
}

/// The index slot of a session: the first 8 bytes of its session key. Sessions that share
/// one share a chain, so dropping one session's answers may drop another's: never the
/// other way round.
pub(super) fn session_slot(session_key: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&session_key[..8]);
    u64::from_le_bytes(first)
}

/// One cached answer.
pub(super) struct Entry {
    /// The token's whole hash.
    pub(super) token: [u8; 32],
    pub(super) view: Arc<SessionView>,
    /// When the answer stops holding (the token's expiry or the session's deadline,
    /// whichever is first), on this replica's monotonic clock.
    pub(super) expires: Instant,
    /// The key of the next cached token of the same session slot; 0 ends the chain.
    pub(super) next: u64,
}

/// The answers, the session index, and what decides whether an answer may be inserted.
#[derive(Default)]
pub(super) struct State {
    pub(super) live: bool,
    pub(super) generation: u64,
    /// Boxed: the table's slots stay 16 bytes, so its spare capacity (up to half of it
    /// right after it grows) costs little.
    pub(super) entries: HashMap<u64, Box<Entry>>,
    /// Session slot → the key of the first entry of its chain.
    pub(super) sessions: HashMap<u64, u64>,
}

impl State {
    /// Removes the entry under `key`, unlinking it from its session's chain.
    pub(super) fn remove_key(&mut self, key: u64) -> bool {
        let Some(entry) = self.entries.remove(&key) else {
            return false;
        };
        let slot = session_slot(entry.view.session_key_bytes());
        match self.sessions.get(&slot).copied() {
            Some(head) if head == key => {
                if entry.next == 0 {
                    self.sessions.remove(&slot);
                } else {
                    self.sessions.insert(slot, entry.next);
                }
            }
            Some(mut at) => {
                // Chains are a session's live tabs: a handful at most.
                while let Some(before) = self.entries.get_mut(&at) {
                    if before.next == key {
                        before.next = entry.next;
                        break;
                    }
                    at = before.next;
                }
            }
            None => {}
        }
        true
    }

    /// Removes every entry chained under `slot`.
    pub(super) fn remove_session(&mut self, slot: u64) {
        let mut at = self.sessions.remove(&slot).unwrap_or(0);
        while at != 0 {
            at = self.entries.remove(&at).map_or(0, |entry| entry.next);
        }
    }

    pub(super) fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.entries.clear();
        self.sessions.clear();
        // An emptied cache gives its tables' memory back too.
        self.entries.shrink_to_fit();
        self.sessions.shrink_to_fit();
    }
}
