//! The default encoder, end to end, against independent Python references:
//! preprocessing vs PIL+numpy (1e-2 per element), embeddings vs onnxruntime on
//! the same tensors (1e-4), ImageNet top-1 on real photos.

use crate::common::{max_abs_diff, read_npy_f32, repo};
use edgeclr::data::{decode_image, Dataset, DecodeLimits};
use edgeclr::embed::{embed_dataset, EmbedOptions};
use edgeclr::{Encoder, LoadOptions, Manifest, Preprocessor, TractEncoder};
use ndarray::{s, Array4, Axis, Ix2, Ix3, Ix4};

const PHOTOS: [&str; 4] = ["coffee", "chelsea", "astronaut", "rocket"];

fn default_manifest() -> Manifest {
    Manifest::load(&repo("models/mobilenet_v2")).expect("default manifest")
}

fn load() -> TractEncoder {
    TractEncoder::load(&default_manifest(), &LoadOptions::default()).expect("default model loads")
}

#[test]
fn preprocessing_matches_pil_reference_on_real_photos() {
    let pre = Preprocessor::new(&default_manifest());
    for photo in PHOTOS {
        let image = decode_image(
            &repo(&format!("data/photos/{photo}.png")),
            DecodeLimits::default(),
        )
        .unwrap();
        let ours = pre.batch(&[image]).unwrap();
        let reference = read_npy_f32(&format!("preprocess_{photo}.npy"))
            .into_dimensionality::<Ix3>()
            .unwrap();
        let diff = max_abs_diff(ours.index_axis(Axis(0), 0), reference.view());
        assert!(
            diff < 1e-2,
            "{photo}: preprocessing differs from PIL by {diff}"
        );
    }
}

#[test]
fn preprocessing_matches_pil_reference_on_fashion_mnist() {
    let pre = Preprocessor::new(&default_manifest());
    let test = Dataset::open(&repo("data/fashion-mnist"), Some("t10k")).unwrap();
    let images = [test.image(0).unwrap(), test.image(1).unwrap()];
    let ours = pre.batch(&images).unwrap();
    let reference = read_npy_f32("preprocess_fmnist_first2.npy")
        .into_dimensionality::<Ix4>()
        .unwrap();
    let diff = max_abs_diff(ours.view(), reference.view());
    assert!(
        diff < 1e-2,
        "Fashion-MNIST preprocessing differs from PIL by {diff}"
    );
}

#[test]
fn embeddings_and_logits_match_onnxruntime() {
    let mut encoder = load();
    for photo in PHOTOS {
        let input = read_npy_f32(&format!("preprocess_{photo}.npy"))
            .into_dimensionality::<Ix3>()
            .unwrap();
        let batch = input.insert_axis(Axis(0));
        let out = encoder.run(batch.view()).unwrap();
        let emb_ref = read_npy_f32(&format!("embedding_ort_{photo}.npy"))
            .into_dimensionality::<Ix2>()
            .unwrap();
        let logits_ref = read_npy_f32(&format!("logits_ort_{photo}.npy"))
            .into_dimensionality::<Ix2>()
            .unwrap();
        let d_emb = max_abs_diff(out.embedding.view(), emb_ref.view());
        let d_logits = max_abs_diff(out.logits.as_ref().unwrap().view(), logits_ref.view());
        assert!(
            d_emb < 1e-4,
            "{photo}: embedding differs from onnxruntime by {d_emb}"
        );
        assert!(
            d_logits < 1e-3,
            "{photo}: logits differ from onnxruntime by {d_logits}"
        );
    }
}

#[test]
fn batched_run_matches_onnxruntime_and_single_runs() {
    let mut encoder = load();
    let input = read_npy_f32("preprocess_fmnist_first2.npy")
        .into_dimensionality::<Ix4>()
        .unwrap();
    let reference = read_npy_f32("embedding_ort_fmnist_first2.npy")
        .into_dimensionality::<Ix2>()
        .unwrap();
    let batched = encoder.run(input.view()).unwrap().embedding;
    assert!(max_abs_diff(batched.view(), reference.view()) < 1e-4);
    for i in 0..2 {
        let single = encoder
            .run(input.slice(s![i..i + 1, .., .., ..]))
            .unwrap()
            .embedding;
        assert!(max_abs_diff(single.view(), batched.slice(s![i..i + 1, ..])) < 1e-4);
    }
}

#[test]
fn real_photos_get_their_imagenet_classes() {
    let manifest = default_manifest();
    let names = manifest.class_names().unwrap().unwrap();
    let mut encoder = load();
    let pre = Preprocessor::new(&manifest);
    let top1 = |encoder: &mut TractEncoder, photo: &str| {
        let image = decode_image(
            &repo(&format!("data/photos/{photo}.png")),
            DecodeLimits::default(),
        )
        .unwrap();
        let logits = encoder
            .run(pre.batch(&[image]).unwrap().view())
            .unwrap()
            .logits
            .unwrap();
        let row = logits.row(0);
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        names[best].clone()
    };
    assert_eq!(top1(&mut encoder, "coffee"), "espresso");
    let cat = top1(&mut encoder, "chelsea");
    assert!(
        ["tabby, tabby cat", "tiger cat", "Egyptian cat"].contains(&cat.as_str()),
        "chelsea → {cat}"
    );
}

#[test]
fn embedding_a_dataset_keeps_labels_and_order() {
    let mut encoder = TractEncoder::load(
        &default_manifest(),
        &LoadOptions {
            threads: 2,
            embedding_only: true,
        },
    )
    .unwrap();
    let folder = Dataset::open(&repo("data/fashion-folder"), None).unwrap();
    let options = EmbedOptions {
        batch_size: 4,
        normalize: true,
        ..EmbedOptions::default()
    };
    let mut calls = 0;
    let out = embed_dataset(&mut encoder, &folder, &options, |_| calls += 1).unwrap();
    assert_eq!(out.embeddings.dim(), (15, 1280));
    assert_eq!(calls, 4, "one progress call per batch of 4 over 15 images");
    assert_eq!(
        out.labels.as_deref(),
        Some(&[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2][..])
    );
    assert_eq!(out.class_names.unwrap(), ["Bag", "Sneaker", "Trouser"]);
    for row in out.embeddings.rows() {
        let norm = row.dot(&row).sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "--normalize gives unit rows, got {norm}"
        );
    }
    assert!(out.logits.is_none());
    // The same image via the dataset and via a direct batch gives the same embedding.
    let pre = Preprocessor::new(encoder.manifest());
    let direct: Array4<f32> = pre.batch(&[folder.image(7).unwrap()]).unwrap();
    let mut e = encoder.run(direct.view()).unwrap().embedding;
    let n = e.row(0).dot(&e.row(0)).sqrt();
    e.mapv_inplace(|v| v / n);
    assert!(max_abs_diff(e.row(0), out.embeddings.row(7)) < 1e-5);
}

/// tract with worker threads gives the single-threaded embeddings, rows in
/// dataset order, for batches that split evenly, unevenly and not at all;
/// shards concatenate to the unsharded output.
#[test]
fn worker_threads_and_shards_keep_the_single_threaded_result() {
    let folder = Dataset::open(&repo("data/fashion-folder"), None).unwrap();
    let embed = |threads: usize, batch_size: usize, shard: Option<&str>| {
        let mut encoder = TractEncoder::load(
            &default_manifest(),
            &LoadOptions {
                threads,
                embedding_only: true,
            },
        )
        .unwrap();
        let options = EmbedOptions {
            batch_size,
            shard: shard.map(|s| s.parse().unwrap()),
            ..EmbedOptions::default()
        };
        embed_dataset(&mut encoder, &folder, &options, |_| {}).unwrap()
    };
    let serial = embed(1, 15, None);
    assert_eq!(serial.embeddings.nrows(), 15);
    for (threads, batch) in [(2, 15), (3, 4), (2, 1), (8, 5)] {
        let parallel = embed(threads, batch, None);
        assert_eq!(parallel.indices, serial.indices);
        let diff = max_abs_diff(parallel.embeddings.view(), serial.embeddings.view());
        assert!(
            diff < 1e-5,
            "{threads} threads, batch {batch}: differs by {diff}"
        );
    }
    let shards: Vec<_> = (1..=4)
        .map(|i| embed(2, 3, Some(&format!("{i}/4"))))
        .collect();
    let rows: Vec<usize> = shards.iter().map(|s| s.embeddings.nrows()).collect();
    assert_eq!(
        rows,
        [3, 4, 4, 4],
        "contiguous shards of 15, sizes within one"
    );
    let views: Vec<_> = shards.iter().map(|s| s.embeddings.view()).collect();
    let joined = ndarray::concatenate(Axis(0), &views).unwrap();
    assert!(max_abs_diff(joined.view(), serial.embeddings.view()) < 1e-5);
    let indices: Vec<usize> = shards.iter().flat_map(|s| s.indices.clone()).collect();
    assert_eq!(indices, serial.indices);
    for bad in ["0/4", "5/4", "0/0", "1/0", "2", "a/b", "-1/3"] {
        assert!(
            bad.parse::<edgeclr::embed::Shard>().is_err(),
            "{bad} accepted"
        );
    }
}

/// `pool`: adaptive-average bins as PyTorch's `adaptive_avg_pool2d`
/// (overlapping when the grid does not divide the map), mean, flatten,
/// and the spec syntax.
#[test]
fn pool_grid_mean_and_flatten() {
    use edgeclr::manifest::Pool;
    // One sample, one channel, a 3×3 map 0..9: a 2×2 grid takes rows/cols
    // 0..2 and 1..3 (PyTorch: start floor(i·3/2), end ceil((i+1)·3/2)).
    let x = ndarray::Array::from_shape_vec((1, 1, 3, 3), (0..9).map(|v| v as f32).collect())
        .unwrap()
        .into_dyn();
    let grid = Pool::Grid(2).apply(x.view()).unwrap();
    assert_eq!(grid.as_slice().unwrap(), &[2.0, 3.0, 5.0, 6.0]);
    assert_eq!(Pool::Mean.apply(x.view()).unwrap()[[0, 0]], 4.0);
    assert_eq!(Pool::Flatten.apply(x.view()).unwrap().ncols(), 9);
    assert_eq!(
        Pool::Grid(3).apply(x.view()).unwrap().as_slice().unwrap()[4],
        4.0
    );
    assert!(Pool::Grid(4).apply(x.view()).unwrap_err().contains("finer"));
    let flat = ndarray::ArrayD::<f32>::zeros(vec![2, 5]);
    assert!(Pool::Mean
        .apply(flat.view())
        .unwrap_err()
        .contains("[N, C, H, W]"));
    assert_eq!(Pool::None.apply(flat.view()).unwrap().dim(), (2, 5));
    for spec in ["none", "mean", "flatten", "grid:7x7"] {
        assert_eq!(spec.parse::<Pool>().unwrap().to_string(), spec);
    }
    assert_eq!("grid:4".parse::<Pool>().unwrap(), Pool::Grid(4));
    for bad in ["grid:0x0", "grid:2x3", "max", "grid:x"] {
        assert!(bad.parse::<Pool>().is_err(), "{bad}");
    }
}

/// An intermediate tensor as the embedding: made a graph output at load,
/// pooled to a 7×7 grid; its mean over the grid cells of each channel is
/// the globally pooled block output, and a misspelt name lists neighbours.
#[test]
fn intermediate_tensor_embedding_with_grid_pooling() {
    let mut grid = Manifest::load(&repo("models/mobilenet_v2_f13_grid7")).unwrap();
    let image = image::open(repo("data/photos/coffee.png"))
        .unwrap()
        .to_rgb8();
    let embed = |m: &Manifest| {
        let mut enc = TractEncoder::load(m, &LoadOptions::default()).unwrap();
        let pre = Preprocessor::new(m);
        enc.run(pre.batch(std::slice::from_ref(&image)).unwrap().view())
            .unwrap()
            .embedding
    };
    let g = embed(&grid);
    assert_eq!(g.dim(), (1, 96 * 49));
    let mut mean = grid.clone();
    mean.outputs.pool = edgeclr::manifest::Pool::Mean;
    mean.outputs.embedding_dim = 96;
    let m = embed(&mean);
    // 14×14 map, 7×7 grid of 2×2 cells: the mean of the cells is the mean.
    for c in 0..96 {
        let cells = g
            .slice(ndarray::s![0, c * 49..(c + 1) * 49])
            .mean()
            .unwrap();
        assert!(
            (cells - m[[0, c]]).abs() < 1e-4,
            "channel {c}: {cells} vs {}",
            m[[0, c]]
        );
    }
    grid.outputs.embedding = "features.13x".into();
    let err = TractEncoder::load(&grid, &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("nearest names: features.13"),
        "{err}"
    );
}
