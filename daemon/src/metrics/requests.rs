//! `omni_secretd_requests_total`: one counter per operation and result, resolved on first use.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec};
use secretd_proto::{ErrorCode, Request};

/// Results `omni_secretd_requests_total` tells apart: `ok`, every code a daemon sends, and
/// `unknown`.
const RESULTS: usize = ErrorCode::ALL.len() + 2;

/// `omni_secretd_requests_total`, one counter per operation and result, each resolved on its
/// first use (so the scrape shows only pairs that happened) and then a single atomic add: no
/// label hashing or lock per request.
#[derive(Debug)]
pub(super) struct Requests {
    /// The labelled family the counters come from.
    family: IntCounterVec,
    /// By [`Request::op_index`], then result (`ok` first, then [`ErrorCode::ALL`], then
    /// `unknown`).
    counters: Vec<[OnceLock<IntCounter>; RESULTS]>,
}

impl Requests {
    pub(super) fn new(family: IntCounterVec) -> Requests {
        Requests {
            family,
            counters: Request::OPS
                .iter()
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
        }
    }

    pub(super) fn count(&self, op: usize, refused: Option<ErrorCode>) {
        let result = match refused {
            None => 0,
            Some(code) => ErrorCode::ALL
                .iter()
                .position(|c| *c == code)
                .map_or(RESULTS - 1, |i| i + 1),
        };
        let Some(cell) = self.counters.get(op).map(|row| &row[result]) else {
            return;
        };
        cell.get_or_init(|| {
            let label = refused.map_or("ok", ErrorCode::as_str);
            self.family.with_label_values(&[Request::OPS[op], label])
        })
        .inc();
    }
}
