//! A queue per uid, served in turn: what the accept loop uses for the work after accept, so
//! a uid with a thousand connections waiting to start delays another uid's by one at most.

use std::collections::{HashMap, VecDeque};

/// Items queued per uid; [`FairQueue::pop`] takes from each uid with items in turn.
#[derive(Debug)]
pub(super) struct FairQueue<T> {
    /// Each uid's items, oldest first; a uid is removed when its queue empties.
    queues: HashMap<u32, VecDeque<T>>,
    /// The uids with items, in the order they are served next.
    turns: VecDeque<u32>,
    /// Items queued in all.
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            queues: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` of `uid` behind that uid's earlier items.
    pub(super) fn push(&mut self, uid: u32, item: T) {
        let queue = self.queues.entry(uid).or_default();
        if queue.is_empty() {
            self.turns.push_back(uid);
        }
        queue.push_back(item);
        self.len += 1;
    }

    /// The oldest item of the uid whose turn it is; that uid goes to the back of the line.
    pub(super) fn pop(&mut self) -> Option<T> {
        let uid = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&uid)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&uid);
        } else {
            self.turns.push_back(uid);
        }
        self.len -= usize::from(item.is_some());
        item
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the queue.
    pub(super) fn clear(&mut self) {
        self.queues.clear();
        self.turns.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_take_turns_whatever_their_backlog() {
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push(1, i);
        }
        q.push(2, 5000);
        q.push(3, 6000);
        // uid 1 came first and keeps its order, but uids 2 and 3 wait one turn, not 1000.
        let first: Vec<_> = (0..4).map(|_| q.pop().expect("item")).collect();
        assert_eq!(first, vec![0, 5000, 6000, 1]);
        let mut rest = 0;
        while q.pop().is_some() {
            rest += 1;
        }
        assert_eq!(rest, 998);
        assert!(q.is_empty());
    }

    #[test]
    fn a_uid_that_empties_rejoins_at_the_back() {
        let mut q = FairQueue::default();
        q.push(1, 'a');
        q.push(2, 'b');
        q.push(2, 'c');
        assert_eq!(q.pop(), Some('a'));
        q.push(1, 'd');
        assert_eq!(q.pop(), Some('b'));
        assert_eq!(q.pop(), Some('d'));
        assert_eq!(q.pop(), Some('c'));
        assert_eq!(q.pop(), None);
        q.push(4, 'e');
        q.clear();
        assert!(q.is_empty() && q.pop().is_none());
    }
}
