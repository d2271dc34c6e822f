//! Datasets and embedding files on the shipped data.

use crate::common::repo;
use edgeclr::data::{find_duplicates, read_idx, Dataset};
use edgeclr::store::{EmbeddingMeta, EmbeddingSet};
use ndarray::Array2;

#[test]
fn shipped_fashion_mnist_sample_is_balanced() {
    for (split, per_class) in [("train", 100), ("t10k", 50)] {
        let data = Dataset::open(&repo("data/fashion-mnist"), Some(split)).unwrap();
        assert_eq!(data.len(), per_class * 10);
        let labels = data.labels().unwrap();
        for class in 0..10 {
            assert_eq!(
                labels.iter().filter(|&&l| l == class).count(),
                per_class,
                "{split} class {class}"
            );
        }
        let names = data.class_names().unwrap();
        assert_eq!(names[0], "T-shirt/top");
        assert_eq!(names[9], "Ankle boot");
        let image = data.image(0).unwrap();
        assert_eq!(image.dimensions(), (28, 28));
        let px = image.get_pixel(14, 14).0;
        assert!(
            px[0] == px[1] && px[1] == px[2],
            "grayscale replicated to RGB"
        );
    }
}

#[test]
fn idx_reader_matches_the_file_header() {
    let a = read_idx(&repo("data/fashion-mnist/t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(a.dims, vec![500, 28, 28]);
    assert_eq!(a.data.len(), 500 * 28 * 28);
    let l = read_idx(&repo("data/fashion-mnist/t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(l.dims, vec![500]);
    assert!(l.data.iter().all(|&v| v < 10));
}

#[test]
fn folder_with_class_subfolders_is_labelled() {
    let data = Dataset::open(&repo("data/fashion-folder"), None).unwrap();
    assert_eq!(data.len(), 15);
    assert_eq!(data.class_names().unwrap(), ["Bag", "Sneaker", "Trouser"]);
    assert!(data.describe(5).ends_with("Sneaker/000.png"));
    // The folder's PNGs are the same pixels as the IDX sample they came from.
    let flat = Dataset::open(&repo("data/fashion-folder/Bag"), None).unwrap();
    assert_eq!(flat.len(), 5);
    assert!(flat.labels().is_none());
}

#[test]
fn embedding_set_round_trips_through_npy() {
    let dir = std::env::temp_dir().join(format!("edgeclr-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("emb.npy");
    let set = EmbeddingSet {
        embeddings: Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f32 * 0.5),
        labels: Some(vec![0, 1, 2, 1, 0]),
        meta: EmbeddingMeta {
            model: "m".into(),
            class_names: Some(vec!["a".into(), "b".into(), "c".into()]),
            ..EmbeddingMeta::default()
        },
    };
    set.save(&path).unwrap();
    let back = EmbeddingSet::load(&path).unwrap();
    assert_eq!(back.embeddings, set.embeddings);
    assert_eq!(back.labels, set.labels);
    assert_eq!(back.meta.class_names, set.meta.class_names);
    assert!(
        !dir.join("emb.npy.tmp").exists(),
        "no temporary file left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn duplicates_are_counted_by_content_not_by_name() {
    // The shipped IDX sample holds 1000 distinct images.
    let idx = Dataset::open(&repo("data/fashion-mnist"), Some("train")).unwrap();
    let report = find_duplicates(&idx, 1000).unwrap();
    assert_eq!(
        (report.images, report.distinct, report.largest_group),
        (1000, 1000, 1)
    );
    assert!(!report.all_identical());

    // A folder of one picture under six names, then with one other picture.
    let dir = std::env::temp_dir().join(format!("edgeclr-dups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bag = repo("data/fashion-folder/Bag/000.png");
    for i in 0..6 {
        std::fs::copy(&bag, dir.join(format!("{i}.png"))).unwrap();
    }
    let same = find_duplicates(&Dataset::open(&dir, None).unwrap(), 100).unwrap();
    assert_eq!((same.images, same.distinct, same.largest_group), (6, 1, 6));
    assert!(same.all_identical());
    assert_eq!(same.duplicates(), 5);
    std::fs::copy(
        repo("data/fashion-folder/Sneaker/000.png"),
        dir.join("9.png"),
    )
    .unwrap();
    let mixed = find_duplicates(&Dataset::open(&dir, None).unwrap(), 100).unwrap();
    assert_eq!((mixed.distinct, mixed.largest_group), (2, 6));
    assert!(!mixed.all_identical());
    // `n` limits the count to the first images.
    assert_eq!(
        find_duplicates(&Dataset::open(&dir, None).unwrap(), 1)
            .unwrap()
            .images,
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch directory for one test, removed first if a killed run left it.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeclr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_image(class: &str, file: &str, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(repo(&format!("data/fashion-folder/{class}/{file}")), to).unwrap();
}

/// `train/` + `test/` class-per-subfolder trees: `test` and `t10k` name the
/// same split, and a class missing from one split keeps every label the same
/// class in both (numbered by the union of class names).
#[test]
fn split_trees_number_classes_alike_in_every_split() {
    let dir = scratch("split-tree");
    for class in ["Bag", "Sneaker", "Trouser"] {
        for file in ["000.png", "001.png"] {
            copy_image(class, file, &dir.join("train").join(class).join(file));
        }
    }
    // The test split lacks "Bag": without the union, Sneaker would be label 0 there.
    copy_image("Sneaker", "002.png", &dir.join("test/Sneaker/002.png"));
    copy_image("Trouser", "002.png", &dir.join("test/Trouser/002.png"));
    assert!(Dataset::has_splits(&dir));
    let train = Dataset::open(&dir, Some("train")).unwrap();
    assert_eq!(train.labels().unwrap(), [0, 0, 1, 1, 2, 2]);
    for name in ["test", "t10k"] {
        let test = Dataset::open(&dir, Some(name)).unwrap();
        assert_eq!(test.len(), 2);
        assert_eq!(test.labels().unwrap(), [1, 2], "split '{name}'");
        assert_eq!(test.class_names(), train.class_names());
    }
    let err = Dataset::open(&dir, Some("val")).unwrap_err().to_string();
    assert!(
        err.contains("no 'val' split") && err.contains("train, test"),
        "{err}"
    );
    // The shipped IDX directory has splits; a plain class folder does not.
    assert!(Dataset::has_splits(&repo("data/fashion-mnist")));
    assert!(!Dataset::has_splits(&repo("data/fashion-folder")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// CSV lists: header optional, paths relative to the list (quoted when they
/// hold commas), labels sorted into class names; unlabelled lists; every bad
/// row refused with its line number.
#[test]
fn csv_image_lists_with_and_without_labels() {
    let dir = scratch("csv-list");
    copy_image("Bag", "000.png", &dir.join("imgs/a.png"));
    copy_image("Trouser", "001.png", &dir.join("imgs/b, with comma.png"));
    copy_image("Sneaker", "002.png", &dir.join("c.png"));
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let list = write(
        "list.csv",
        "path,label\nimgs/a.png,Bag\n\"imgs/b, with comma.png\",Trouser\n# a comment\nc.png,Bag\n",
    );
    let data = Dataset::open(&list, None).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.class_names().unwrap(), ["Bag", "Trouser"]);
    assert_eq!(data.labels().unwrap(), [0, 1, 0]);
    assert!(data.describe(1).ends_with("b, with comma.png"));
    let direct = edgeclr::data::decode_image(
        &repo("data/fashion-folder/Trouser/001.png"),
        Default::default(),
    )
    .unwrap();
    assert_eq!(data.image(1).unwrap(), direct);

    let unlabelled = write("plain.csv", "imgs/a.png\nc.png\n");
    let data = Dataset::open(&unlabelled, None).unwrap();
    assert_eq!(data.len(), 2);
    assert!(data.labels().is_none());

    for (text, wanted) in [
        ("imgs/a.png,Bag\nmissing.png,Bag\n", ":2: "),
        ("imgs/a.png,Bag\nc.png\n", "every row needs a label"),
        ("imgs/a.png,Bag,extra\n", "3 columns"),
        ("path,label\n", "no images found"),
    ] {
        let bad = write("bad.csv", text);
        let err = Dataset::open(&bad, None).unwrap_err().to_string();
        assert!(err.contains(wanted), "{text:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
