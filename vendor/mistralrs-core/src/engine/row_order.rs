//! RAPPORT PATCH (new file): the row order of a decoding batch, as a pure function of sequence
//! ids (`batch_rows` explains the order). It depends on nothing else in the crate, so that
//! `crates/generate` includes this file in its own unit tests: a vendored crate's tests are
//! not run by the workspace.

use std::collections::{HashMap, HashSet};

/// Indices into `current` (sequence ids) in row order, given the ids of the previous rows.
pub(crate) fn row_order(previous: &[usize], current: &[usize]) -> Vec<usize> {
    let index_of: HashMap<usize, usize> = current.iter().enumerate().map(|(index, &id)| (id, index)).collect();
    let staying: Vec<(usize, usize)> = previous
        .iter()
        .enumerate()
        .filter_map(|(row, id)| index_of.get(id).map(|&index| (row, index)))
        .collect();
    let kept = staying.len();
    let mut rows: Vec<Option<usize>> = vec![None; kept];
    let mut from_the_end = Vec::new();
    for &(row, index) in &staying {
        if row < kept {
            rows[row] = Some(index);
        } else {
            from_the_end.push(index);
        }
    }
    // As many rows below `kept` are free as sequences stay beyond it.
    let mut from_the_end = from_the_end.into_iter();
    for row in rows.iter_mut().filter(|row| row.is_none()) {
        *row = from_the_end.next();
    }
    let previous_ids: HashSet<usize> = previous.iter().copied().collect();
    rows.into_iter()
        .map(|row| row.expect("every kept row is filled"))
        .chain((0..current.len()).filter(|&index| !previous_ids.contains(&current[index])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::row_order;

    fn rows(previous: &[usize], current: &[usize]) -> Vec<usize> {
        row_order(previous, current).into_iter().map(|index| current[index]).collect()
    }

    #[test]
    fn the_same_sequences_keep_their_rows_whatever_order_they_come_in() {
        assert_eq!(rows(&[7, 3, 9], &[9, 7, 3]), vec![7, 3, 9]);
    }

    #[test]
    fn a_finished_sequence_row_goes_to_the_last_one_and_new_ones_go_at_the_end() {
        assert_eq!(rows(&[1, 2, 3, 4], &[4, 1, 3, 8, 2]), vec![1, 2, 3, 4, 8]);
        assert_eq!(rows(&[1, 2, 3, 4], &[1, 3, 4]), vec![1, 4, 3]);
        assert_eq!(rows(&[1, 2, 3, 4], &[3, 9, 4]), vec![3, 4, 9]);
        assert_eq!(rows(&[1, 2], &[5, 6]), vec![5, 6]);
    }
}
