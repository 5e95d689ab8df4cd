//! Label-stable re-fits: new clusters are matched to the previous version's segments by how many
//! users they share (Hungarian algorithm, maximum total overlap), so a segment keeps its id and
//! name while it is still the same group of people. Membership overlap, not centroid distance:
//! a re-fit retrains the encoder, so the two versions' embedding spaces are not comparable.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lineage {
    /// For each new cluster (by index): the previous segment id it continues, if any.
    pub continues: Vec<Option<i32>>,
    /// New clusters that mostly came from a previous segment continued by another cluster.
    pub splits: Vec<(usize, i32)>,
    /// Previous segments that no new cluster continues.
    pub retired: Vec<i32>,
    /// Retired segments whose users mostly moved to one new cluster: (old id, new cluster).
    pub merged: Vec<(i32, usize)>,
}

/// `overlap[i][j]`: users in new cluster `i` that were in previous segment `old_ids[j]`.
/// A pair is kept when the shared users are a majority of the smaller of the two groups.
pub fn match_segments(overlap: &[Vec<u64>], old_ids: &[i32]) -> Lineage {
    let k_new = overlap.len();
    let k_old = old_ids.len();
    let n = k_new.max(k_old);
    let mut continues = vec![None; k_new];
    if n > 0 {
        let weights = Matrix::from_fn(n, n, |(i, j)| {
            if i < k_new && j < k_old { overlap[i][j] as i64 } else { 0 }
        });
        let (_, assignment) = kuhn_munkres(&weights);
        let new_size: Vec<u64> = overlap.iter().map(|r| r.iter().sum()).collect();
        let old_size: Vec<u64> = (0..k_old).map(|j| overlap.iter().map(|r| r[j]).sum()).collect();
        for (i, &j) in assignment.iter().enumerate().take(k_new) {
            if j < k_old && overlap[i][j] > 0 && 2 * overlap[i][j] > new_size[i].min(old_size[j]) {
                continues[i] = Some(old_ids[j]);
            }
        }
    }
    let argmax_old = |i: usize| (0..k_old).max_by_key(|&j| overlap[i][j]).filter(|&j| overlap[i][j] > 0);
    let splits = (0..k_new)
        .filter(|&i| continues[i].is_none())
        .filter_map(|i| argmax_old(i).map(|j| (i, old_ids[j])))
        .filter(|(_, id)| continues.contains(&Some(*id)))
        .collect();
    let retired: Vec<i32> = old_ids.iter().copied().filter(|id| !continues.contains(&Some(*id))).collect();
    let merged = retired
        .iter()
        .filter_map(|&id| {
            let j = old_ids.iter().position(|&o| o == id)?;
            let i = (0..k_new).max_by_key(|&i| overlap[i][j]).filter(|&i| overlap[i][j] > 0)?;
            continues[i].is_some().then_some((id, i))
        })
        .collect();
    Lineage { continues, splits, retired, merged }
}

/// Segment ids for the new clusters: continued ids are kept, the others get fresh ids above
/// every previous one.
pub fn assign_ids(lineage: &Lineage, old_ids: &[i32]) -> Vec<i32> {
    let mut next = old_ids.iter().copied().max().unwrap_or(0) + 1;
    lineage
        .continues
        .iter()
        .map(|c| {
            c.unwrap_or_else(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuted_clusters_keep_their_ids() {
        // new cluster 0 is old segment 3, 1 is 1, 2 is 2
        let overlap = vec![vec![0, 2, 95], vec![90, 5, 0], vec![3, 80, 1]];
        let l = match_segments(&overlap, &[1, 2, 3]);
        assert_eq!(l.continues, vec![Some(3), Some(1), Some(2)]);
        assert_eq!(assign_ids(&l, &[1, 2, 3]), vec![3, 1, 2]);
        assert!(l.retired.is_empty() && l.splits.is_empty());
    }

    #[test]
    fn a_split_gets_a_new_id_and_is_recorded() {
        // old segment 1 split into new clusters 0 and 2
        let overlap = vec![vec![60, 0], vec![0, 100], vec![40, 0]];
        let l = match_segments(&overlap, &[1, 2]);
        assert_eq!(l.continues, vec![Some(1), Some(2), None]);
        assert_eq!(assign_ids(&l, &[1, 2]), vec![1, 2, 3]);
        assert_eq!(l.splits, vec![(2, 1)]);
    }

    #[test]
    fn a_merge_retires_one_id() {
        // old segments 1 and 2 merged into new cluster 0
        let overlap = vec![vec![100, 90], vec![0, 0]];
        let l = match_segments(&overlap, &[1, 2]);
        assert_eq!(l.continues[0], Some(1));
        assert_eq!(l.retired, vec![2]);
        assert_eq!(l.merged, vec![(2, 0)]);
        assert_eq!(assign_ids(&l, &[1, 2]), vec![1, 3]);
    }

    #[test]
    fn a_group_that_changed_too_much_is_new() {
        // new cluster 0 mixes two old segments whose majorities went elsewhere
        let overlap = vec![vec![4, 4], vec![6, 0], vec![0, 6]];
        let l = match_segments(&overlap, &[1, 2]);
        assert_eq!(l.continues, vec![None, Some(1), Some(2)]);
        assert_eq!(assign_ids(&l, &[1, 2]), vec![3, 1, 2]);
        // a three-way split: one part keeps the id, the other two are recorded as splits
        let overlap = vec![vec![10], vec![10], vec![10]];
        let l = match_segments(&overlap, &[7]);
        assert_eq!(l.continues.iter().filter(|c| **c == Some(7)).count(), 1);
        assert_eq!(l.splits.len(), 2);
    }
}
