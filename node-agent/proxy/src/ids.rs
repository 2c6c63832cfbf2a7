//! Backend and service id allocation: the lowest free id first, from 1.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// Hands out ids `1..=max`, always the lowest free one, so ids stay dense
/// and freed ids are reused.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    /// What the ids name, for errors ("backend", "service").
    what: &'static str,
    max: u32,
    /// Every id `>= next` is free.
    next: u32,
    /// Free ids below `next`.
    free: BTreeSet<u32>,
}

impl IdAllocator {
    pub fn new(what: &'static str, max: u32) -> Self {
        Self {
            what,
            max,
            next: 1,
            free: BTreeSet::new(),
        }
    }

    /// The lowest free id.
    pub fn allocate(&mut self) -> Result<u32> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next > self.max {
            return Err(Error::IdsExhausted {
                what: self.what,
                max: self.max,
            });
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    /// Marks an id found in the maps as taken. Ids outside `1..=max` are
    /// never handed out anyway and need no bookkeeping.
    pub fn reserve(&mut self, id: u32) {
        if id == 0 || id > self.max {
            return;
        }
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    /// Returns an id; it is handed out again before any higher one.
    pub fn release(&mut self, id: u32) {
        if id == 0 || id >= self.next {
            return;
        }
        if id + 1 == self.next {
            self.next = id;
            while self.next > 1 && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_id_first() {
        let mut ids = IdAllocator::new("backend", 100);
        let got: Vec<u32> = (0..4).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        ids.release(2);
        ids.release(3);
        assert_eq!(ids.allocate().unwrap(), 2);
        assert_eq!(ids.allocate().unwrap(), 3);
        assert_eq!(ids.allocate().unwrap(), 5);
    }

    #[test]
    fn releasing_the_top_shrinks_the_range() {
        let mut ids = IdAllocator::new("backend", 100);
        for _ in 0..5 {
            ids.allocate().unwrap();
        }
        for id in [3, 5, 4] {
            ids.release(id);
        }
        assert_eq!((ids.next, ids.free.len()), (3, 0));
    }

    #[test]
    fn reserved_ids_are_skipped() {
        let mut ids = IdAllocator::new("service", 100);
        for id in [7, 2, 0, 1000] {
            ids.reserve(id);
        }
        let got: Vec<u32> = (0..6).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(got, [1, 3, 4, 5, 6, 8]);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut ids = IdAllocator::new("service", 2);
        ids.allocate().unwrap();
        ids.allocate().unwrap();
        let err = ids.allocate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to allocate a service id: all 2 ids are in use"
        );
    }
}
