//! MoCo memory bank: FIFO ring buffer, normalisation, checkpoints.

use edgeclr::adapt::bank::{BankError, MemoryBank, KEYS_PARAM, LABELS_PARAM, STATE_PARAM};
use edgeclr::adapt::Params;
use ndarray::{array, Array2, ArrayD, IxDyn};

/// `b` keys `[1, id]` with consecutive ids from `start`: the id survives
/// L2 normalisation as `row[1] / row[0]`.
fn batch(start: usize, b: usize) -> Array2<f32> {
    Array2::from_shape_fn(
        (b, 2),
        |(i, j)| if j == 0 { 1.0 } else { (start + i) as f32 },
    )
}

fn ids(rows: ndarray::ArrayView2<f32>) -> Vec<usize> {
    rows.outer_iter()
        .map(|r| (r[1] / r[0]).round() as usize)
        .collect()
}

#[test]
fn new_rejects_empty_shapes() {
    assert!(matches!(
        MemoryBank::new(0, 8),
        Err(BankError::Empty { .. })
    ));
    assert!(matches!(
        MemoryBank::new(8, 0),
        Err(BankError::Empty { .. })
    ));
    let bank = MemoryBank::new(8, 4).unwrap();
    assert_eq!((bank.len(), bank.capacity(), bank.dim()), (0, 8, 4));
    assert!(bank.is_empty());
    assert_eq!(bank.negatives().dim(), (0, 4));
}

#[test]
fn fifo_wraps_with_batches_not_dividing_k() {
    let k = 10;
    let mut bank = MemoryBank::new(k, 2).unwrap();
    let mut next = 0;
    let mut all: Vec<usize> = Vec::new();
    for b in [3usize, 4, 3, 7, 1, 10, 6, 0, 9] {
        bank.enqueue(batch(next, b).view()).unwrap();
        all.extend(next..next + b);
        next += b;
        let keep = all.len().min(k);
        let expected: Vec<usize> = all[all.len() - keep..].to_vec();
        assert_eq!(
            ids(bank.chronological().view()),
            expected,
            "after batch {b}"
        );
        assert_eq!(bank.len(), keep);
        assert_eq!(bank.ptr(), all.len() % k);
        // negatives() holds the same keys (storage order).
        let mut neg = ids(bank.negatives());
        neg.sort_unstable();
        let mut exp = expected.clone();
        exp.sort_unstable();
        assert_eq!(neg, exp);
    }
}

#[test]
fn wrap_overwrites_oldest_rows_in_place() {
    let mut bank = MemoryBank::new(5, 2).unwrap();
    bank.enqueue(batch(0, 3).view()).unwrap(); // rows 0..3 = ids 0,1,2
    bank.enqueue(batch(3, 3).view()).unwrap(); // ids 3,4 at rows 3,4; id 5 at row 0
    assert_eq!(ids(bank.negatives()), vec![5, 1, 2, 3, 4]);
    assert_eq!(bank.ptr(), 1);
    assert_eq!(ids(bank.chronological().view()), vec![1, 2, 3, 4, 5]);
}

#[test]
fn rows_are_l2_normalised() {
    let mut bank = MemoryBank::new(4, 3).unwrap();
    bank.enqueue(array![[3.0f32, 4.0, 0.0], [0.0, 0.0, -2.0], [1e20, 1e20, 0.0]].view())
        .unwrap();
    let neg = bank.negatives();
    assert_eq!(neg.dim(), (3, 3));
    let expect = array![
        [0.6f32, 0.8, 0.0],
        [0.0, 0.0, -1.0],
        [
            std::f32::consts::FRAC_1_SQRT_2,
            std::f32::consts::FRAC_1_SQRT_2,
            0.0
        ]
    ];
    for (a, b) in neg.iter().zip(expect.iter()) {
        assert!((a - b).abs() < 1e-6, "{neg:?}");
    }
    // A zero key stays zero (F.normalize semantics) instead of becoming NaN.
    bank.enqueue(array![[0.0f32, 0.0, 0.0]].view()).unwrap();
    assert!(bank.negatives().iter().all(|x| x.is_finite()));
    assert!(bank.negatives().row(3).iter().all(|&x| x == 0.0));
}

#[test]
fn negatives_grow_until_full_then_stay_k() {
    let (k, d) = (16, 8);
    let mut bank = MemoryBank::new(k, d).unwrap();
    let mut lens = Vec::new();
    for step in 0..10 {
        let keys = Array2::from_shape_fn((5, d), |(i, j)| (step * 5 + i + j + 1) as f32);
        bank.enqueue(keys.view()).unwrap();
        lens.push(bank.negatives().nrows());
        assert_eq!(bank.negatives().ncols(), d);
    }
    assert_eq!(lens, vec![5, 10, 15, 16, 16, 16, 16, 16, 16, 16]);
    assert!(bank.is_full());
}

#[test]
fn nan_and_bad_shapes_are_rejected_atomically() {
    let mut bank = MemoryBank::new(4, 2).unwrap();
    bank.enqueue(batch(0, 2).view()).unwrap();
    let before = bank.clone();
    let bad = array![[1.0f32, 2.0], [f32::NAN, 0.0]];
    assert!(matches!(
        bank.enqueue(bad.view()),
        Err(BankError::NonFinite { row: 1 })
    ));
    let inf = array![[f32::INFINITY, 0.0]];
    assert!(matches!(
        bank.enqueue(inf.view()),
        Err(BankError::NonFinite { row: 0 })
    ));
    assert!(matches!(
        bank.enqueue(Array2::<f32>::ones((2, 3)).view()),
        Err(BankError::Dim {
            got: 3,
            expected: 2
        })
    ));
    assert!(matches!(
        bank.enqueue(Array2::<f32>::ones((5, 2)).view()),
        Err(BankError::BatchTooLarge {
            batch: 5,
            capacity: 4
        })
    ));
    assert_eq!(bank, before, "a rejected batch must not change the bank");
    // A batch of exactly K is fine.
    bank.enqueue(Array2::<f32>::ones((4, 2)).view()).unwrap();
    assert!(bank.is_full());
}

#[test]
fn from_parts_round_trip_and_validation() {
    let mut bank = MemoryBank::new(6, 3).unwrap();
    bank.enqueue(Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32 + 0.5).view())
        .unwrap();
    let back = MemoryBank::from_parts(bank.keys().to_owned(), bank.ptr(), bank.len()).unwrap();
    assert_eq!(back, bank);
    bank.enqueue(Array2::from_shape_fn((5, 3), |(i, j)| (i + j) as f32 - 1.0).view())
        .unwrap();
    assert!(bank.is_full());
    let back = MemoryBank::from_parts(bank.keys().to_owned(), bank.ptr(), bank.len()).unwrap();
    assert_eq!(back, bank);

    let keys = bank.keys().to_owned();
    // ptr out of range, filled > K, ptr != filled while not full.
    assert!(MemoryBank::from_parts(keys.clone(), 6, 6).is_err());
    assert!(MemoryBank::from_parts(keys.clone(), 0, 7).is_err());
    assert!(MemoryBank::from_parts(keys.clone(), 2, 4).is_err());
    assert!(MemoryBank::from_parts(Array2::zeros((0, 3)), 0, 0).is_err());
    // Unnormalised or NaN rows among the filled ones.
    let mut unnorm = keys.clone();
    unnorm[[1, 0]] += 3.0;
    assert!(MemoryBank::from_parts(unnorm, 3, 6).is_err());
    let mut nan = keys;
    nan[[0, 2]] = f32::NAN;
    assert!(matches!(
        MemoryBank::from_parts(nan, 3, 6),
        Err(BankError::NonFinite { row: 0 })
    ));
}

#[test]
fn params_round_trip() {
    let mut bank = MemoryBank::new(7, 4).unwrap();
    for s in 0..3 {
        bank.enqueue(
            Array2::from_shape_fn((3, 4), |(i, j)| ((s * 3 + i) * 4 + j) as f32 + 1.0).view(),
        )
        .unwrap();
    }
    let p = bank.to_params();
    assert_eq!(p.get(KEYS_PARAM).unwrap().shape(), &[7, 4]);
    assert_eq!(p.get(STATE_PARAM).unwrap().as_slice().unwrap(), &[2.0, 7.0]);
    assert_eq!(MemoryBank::from_params(&p).unwrap(), bank);

    // Merged into a larger checkpoint, the other names are ignored.
    let mut ckpt = Params::new();
    ckpt.insert("adapter.up.bias", ArrayD::zeros(IxDyn(&[4])));
    ckpt.extend(p.clone());
    assert_eq!(MemoryBank::from_params(&ckpt).unwrap(), bank);

    let mut bad = p.clone();
    bad.insert(
        STATE_PARAM,
        ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5, 7.0]).unwrap(),
    );
    assert!(MemoryBank::from_params(&bad).is_err());
    let mut bad = p;
    bad.insert(STATE_PARAM, ArrayD::zeros(IxDyn(&[3])));
    assert!(matches!(
        MemoryBank::from_params(&bad),
        Err(BankError::Params(_))
    ));
    assert!(matches!(
        MemoryBank::from_params(&Params::new()),
        Err(BankError::Params(_))
    ));
}

#[test]
fn memory_bytes_4096_by_128_is_2_mib() {
    let bank = MemoryBank::new(4096, 128).unwrap();
    assert_eq!(bank.memory_bytes(), 2 * 1024 * 1024);
}

#[test]
fn labels_follow_their_keys_through_the_ring_and_checkpoints() {
    let mut bank = MemoryBank::new(5, 2).unwrap();
    bank.enqueue_labelled(batch(0, 3).view(), Some(&[Some(7), None, Some(2)]))
        .unwrap();
    assert_eq!(bank.labels(), &[Some(7), None, Some(2)]);
    // Unlabelled keys overwrite labelled ones: rows 3, 4, then 0 wraps.
    bank.enqueue(batch(3, 3).view()).unwrap();
    assert_eq!(ids(bank.negatives()), vec![5, 1, 2, 3, 4]);
    assert_eq!(bank.labels(), &[None, None, Some(2), None, None]);
    // A label count that is not the batch's is refused, nothing written.
    let before = bank.clone();
    assert!(matches!(
        bank.enqueue_labelled(batch(9, 2).view(), Some(&[Some(1)])),
        Err(BankError::Labels { got: 1, batch: 2 })
    ));
    assert_eq!(bank, before);

    let params = bank.to_params();
    let stored = params.get(LABELS_PARAM).unwrap();
    assert_eq!(
        stored.iter().copied().collect::<Vec<_>>(),
        vec![-1.0, -1.0, 2.0, -1.0, -1.0]
    );
    assert_eq!(MemoryBank::from_params(&params).unwrap(), bank);

    // No label anywhere: no label tensor, as in checkpoints of older runs.
    let mut plain = MemoryBank::new(4, 2).unwrap();
    plain.enqueue(batch(0, 2).view()).unwrap();
    assert!(!plain.to_params().contains(LABELS_PARAM));
    bank.clear();
    assert!(bank.labels().is_empty());

    // A damaged label tensor is an error, not a silent relabelling.
    let mut bad = params.clone();
    bad.insert(LABELS_PARAM, ArrayD::from_elem(IxDyn(&[5]), 0.5));
    assert!(matches!(
        MemoryBank::from_params(&bad),
        Err(BankError::State(_))
    ));
    bad.insert(LABELS_PARAM, ArrayD::from_elem(IxDyn(&[4]), 1.0));
    assert!(MemoryBank::from_params(&bad).is_err());
}
