//! Sets of pod indices, sized to their content: a sorted list when sparse, a
//! bitmap when dense. Peer selectors resolve to these once, so a verdict is a
//! lookup rather than a label match.

/// An immutable set of pod indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSet {
    Sparse(Vec<u32>),
    Dense(Vec<u64>),
}

impl PodSet {
    /// Builds a set from indices in ascending order, out of `universe` pods.
    pub fn from_sorted(indices: Vec<u32>, universe: usize) -> PodSet {
        // A bitmap costs universe/8 bytes, a list 4 bytes an entry.
        if indices.len() * 32 > universe {
            let mut bits = vec![0u64; universe.div_ceil(64)];
            for i in indices {
                bits[i as usize / 64] |= 1 << (i % 64);
            }
            PodSet::Dense(bits)
        } else {
            PodSet::Sparse(indices)
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        match self {
            PodSet::Sparse(v) => u32::try_from(index).is_ok_and(|i| v.binary_search(&i).is_ok()),
            PodSet::Dense(bits) => bits
                .get(index / 64)
                .is_some_and(|w| w & (1 << (index % 64)) != 0),
        }
    }

    /// The members, in ascending order.
    pub fn iter(&self) -> PodSetIter<'_> {
        match self {
            PodSet::Sparse(v) => PodSetIter::Sparse(v.iter()),
            PodSet::Dense(bits) => PodSetIter::Dense {
                words: bits,
                word: 0,
                bits: bits.first().copied().unwrap_or(0),
            },
        }
    }

    /// How many members (a bitmap counts its bits).
    pub fn len(&self) -> usize {
        match self {
            PodSet::Sparse(v) => v.len(),
            PodSet::Dense(bits) => bits.iter().map(|w| w.count_ones() as usize).sum(),
        }
    }

    /// Adds or removes one member (the set grows as pods are appended).
    pub fn set(&mut self, index: usize, member: bool) {
        match self {
            PodSet::Sparse(v) => {
                let Ok(i) = u32::try_from(index) else { return };
                match (v.binary_search(&i), member) {
                    (Err(at), true) => v.insert(at, i),
                    (Ok(at), false) => {
                        v.remove(at);
                    }
                    _ => {}
                }
            }
            PodSet::Dense(bits) => {
                if bits.len() <= index / 64 {
                    if !member {
                        return;
                    }
                    bits.resize(index / 64 + 1, 0);
                }
                let bit = 1u64 << (index % 64);
                if member {
                    bits[index / 64] |= bit;
                } else {
                    bits[index / 64] &= !bit;
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            PodSet::Sparse(v) => v.is_empty(),
            PodSet::Dense(bits) => bits.iter().all(|w| *w == 0),
        }
    }
}

/// The members of a [`PodSet`], in ascending order (no allocation: compile walks thousands).
pub enum PodSetIter<'a> {
    Sparse(std::slice::Iter<'a, u32>),
    /// The bits of `words[word]` not visited yet are in `bits`.
    Dense {
        words: &'a [u64],
        word: usize,
        bits: u64,
    },
}

impl Iterator for PodSetIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            PodSetIter::Sparse(it) => it.next().map(|&i| i as usize),
            PodSetIter::Dense { words, word, bits } => loop {
                if *bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    *bits &= *bits - 1;
                    return Some(*word * 64 + b);
                }
                *word += 1;
                *bits = *words.get(*word)?;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_dense_agree() {
        let members: Vec<u32> = vec![0, 3, 64, 65, 149];
        let sparse = PodSet::from_sorted(members.clone(), 100_000);
        let dense = PodSet::from_sorted(members.clone(), 150);
        assert!(matches!(sparse, PodSet::Sparse(_)));
        assert!(matches!(dense, PodSet::Dense(_)));
        for i in 0..150 {
            let expected = members.contains(&(i as u32));
            assert_eq!(sparse.contains(i), expected, "sparse {i}");
            assert_eq!(dense.contains(i), expected, "dense {i}");
        }
        let listed: Vec<usize> = dense.iter().collect();
        let mut grown = dense.clone();
        grown.set(300, true);
        grown.set(3, false);
        let mut sparse_grown = sparse.clone();
        sparse_grown.set(300, true);
        sparse_grown.set(3, false);
        for i in 0..400 {
            let expected = (members.contains(&(i as u32)) && i != 3) || i == 300;
            assert_eq!(grown.contains(i), expected, "dense {i}");
            assert_eq!(sparse_grown.contains(i), expected, "sparse {i}");
        }
        assert_eq!(listed, vec![0, 3, 64, 65, 149]);
        assert_eq!(sparse.iter().collect::<Vec<_>>(), listed);
        assert_eq!((dense.len(), sparse.len()), (5, 5));
        let full = PodSet::from_sorted((0..130).collect(), 130);
        assert_eq!(
            full.iter().collect::<Vec<_>>(),
            (0..130).collect::<Vec<_>>()
        );
        assert_eq!(PodSet::Dense(vec![0, 0]).iter().count(), 0);
        assert!(!dense.contains(10_000));
    }
}
