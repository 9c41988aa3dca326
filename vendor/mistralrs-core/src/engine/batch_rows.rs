//! RAPPORT PATCH (new file): the order of a decoding step's sequences, which is the order of
//! the rows of its batch cache (`kv_cache::left_padded`).
//!
//! The scheduler lists the decoding sequences in whatever order its buckets left them. When
//! the set changes, a sequence whose row moves has to be copied, so the order is chosen to move
//! as few as possible: a sequence that stays keeps its row, a finished sequence's row is taken
//! by one of the last rows (the batch shrinks from the end, as `Vec::swap_remove` does), and a
//! new sequence goes at the end. Only one sequence per finished one moves, and every moved row
//! comes from beyond the rows the batch keeps, which the cache manager relies on to copy rows
//! without one overwriting another before it is read. The order itself is `row_order`, a file
//! of its own so that Rapport's tests can include it (the vendored crate's tests are not run).

use super::row_order::row_order;
use crate::sequence::Sequence;

/// Puts `seqs` in the row order described above, given the ids of the previous decoding step's
/// rows.
pub(super) fn keep_rows(previous: &[usize], seqs: &mut Box<[&mut Sequence]>) {
    if previous.is_empty() {
        return;
    }
    let ids: Vec<usize> = seqs.iter().map(|seq| *seq.id()).collect();
    let order = row_order(previous, &ids);
    let mut slots: Vec<Option<&mut Sequence>> = std::mem::take(seqs).into_vec().into_iter().map(Some).collect();
    *seqs = order
        .into_iter()
        .map(|index| slots[index].take().expect("each sequence goes in one row"))
        .collect();
}
