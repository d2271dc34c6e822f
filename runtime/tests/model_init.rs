//! `model init` on real graphs: the shipped MobileNetV2 (NCHW, an embedding
//! output and logits), the same weights behind an NHWC input, as a bare
//! classifier, and graphs it must refuse.

use crate::common::{max_abs_diff, repo};
use edgeclr::data::{decode_image, DecodeLimits};
use edgeclr::manifest::{Layout, Pool};
use edgeclr::model_init::{guess_manifest, manifest_toml, InitError, InitOptions, Preset};
use edgeclr::onnx::parse_proto;
use edgeclr::{Encoder, LoadOptions, Manifest, Preprocessor, TractEncoder};
use prost::Message;
use tract_onnx::pb;

fn shipped() -> Manifest {
    Manifest::load(&repo("models/mobilenet_v2")).unwrap()
}

fn shipped_proto() -> pb::ModelProto {
    let path = repo("models/mobilenet_v2/mobilenet_v2.onnx");
    parse_proto(&path, &std::fs::read(&path).unwrap()).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeclr-init-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `proto` as `dir/NAME.onnx`.
fn write_model(dir: &std::path::Path, name: &str, proto: &pb::ModelProto) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    path
}

fn embed_photo(manifest: &Manifest) -> ndarray::Array2<f32> {
    let mut encoder = TractEncoder::load(manifest, &LoadOptions::default()).unwrap();
    let image = decode_image(&repo("data/photos/coffee.png"), DecodeLimits::default()).unwrap();
    let batch = Preprocessor::new(manifest).batch(&[image]).unwrap();
    encoder.run(batch.view()).unwrap().embedding
}

fn dims(tensor: &mut pb::ValueInfoProto) -> &mut Vec<pb::tensor_shape_proto::Dimension> {
    use pb::type_proto::Value;
    match tensor.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(Value::TensorType(t)) => &mut t.shape.get_or_insert_with(Default::default).dim,
        _ => panic!("not a tensor type"),
    }
}

fn fixed(v: i64) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)),
        ..Default::default()
    }
}

/// With `--preset torchvision`, the guess is the hand-written shipped manifest
/// (input, layout, preprocessing, embedding, logits, widths, sha256), and the
/// written TOML reads back to it.
#[test]
fn shipped_model_is_guessed_as_written_by_hand() {
    let truth = shipped();
    let options = InitOptions {
        preset: Some(Preset::Torchvision),
        ..InitOptions::default()
    };
    let guess = guess_manifest(&truth.onnx, &options).unwrap();
    let m = &guess.manifest;
    assert_eq!(m.input, truth.input);
    assert_eq!(m.preprocess, truth.preprocess);
    assert_eq!(m.outputs, truth.outputs);
    assert_eq!(m.sha256, truth.sha256);
    assert_eq!(m.name, "mobilenet_v2");
    assert!(guess
        .notes
        .iter()
        .any(|n| n.field == "licence" && n.confirm));

    let dir = scratch("shipped");
    let text = manifest_toml(&guess, &dir).unwrap();
    assert!(text.contains("Confirm before you rely on it"), "{text}");
    std::fs::write(dir.join("manifest.toml"), text).unwrap();
    let back = Manifest::load(&dir).unwrap();
    assert_eq!(back.outputs, truth.outputs);
    assert_eq!(
        std::fs::canonicalize(&back.onnx).unwrap(),
        std::fs::canonicalize(&truth.onnx).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // No preset and a producer that does not say how pixels were normalised: asked.
    let err = guess_manifest(&truth.onnx, &InitOptions::default()).unwrap_err();
    assert!(matches!(err, InitError::Question(_)), "{err}");
    assert!(err.to_string().contains("--preset"), "{err}");
}

/// The same weights behind an NHWC input (a Transpose in front, as tf2onnx
/// exports have): NHWC is read from the channel position, the manifest runs,
/// and the embedding equals the NCHW model's.
#[test]
fn nhwc_input_is_detected_and_runs() {
    let mut proto = shipped_proto();
    let graph = proto.graph.as_mut().unwrap();
    let input = &mut graph.input[0];
    let old = input.name.clone();
    input.name = "images".into();
    let d = dims(input);
    let (c, h, w) = (d[1].clone(), d[2].clone(), d[3].clone());
    d[1] = h;
    d[2] = w;
    d[3] = c;
    graph.node.insert(
        0,
        pb::NodeProto {
            op_type: "Transpose".into(),
            name: "to_nchw".into(),
            input: vec!["images".into()],
            output: vec![old],
            attribute: vec![pb::AttributeProto {
                name: "perm".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: vec![0, 3, 1, 2],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let dir = scratch("nhwc");
    let onnx = write_model(&dir, "nhwc", &proto);
    let guess = guess_manifest(
        &onnx,
        &InitOptions {
            preset: Some(Preset::Torchvision),
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert_eq!(guess.manifest.input.layout, Layout::Nhwc);
    assert_eq!(guess.manifest.input.shape, [224, 224, 3]);
    assert_eq!(guess.manifest.input.name, "images");
    let diff = max_abs_diff(
        embed_photo(&guess.manifest).view(),
        embed_photo(&shipped()).view(),
    );
    assert!(diff < 1e-4, "NHWC twin differs by {diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bare classifier (logits the only output): the embedding is the
/// classifier's input; a feature map named by hand is pooled.
#[test]
fn classifier_input_and_feature_maps_as_embeddings() {
    let mut proto = shipped_proto();
    proto
        .graph
        .as_mut()
        .unwrap()
        .output
        .retain(|o| o.name == "logits");
    let dir = scratch("classifier");
    let onnx = write_model(&dir, "classifier", &proto);
    let caffe = InitOptions {
        preset: Some(Preset::Caffe),
        ..InitOptions::default()
    };
    let guess = guess_manifest(&onnx, &caffe).unwrap();
    let out = &guess.manifest.outputs;
    assert_eq!(out.embedding, "embedding");
    assert_eq!((out.embedding_dim, out.num_classes), (1280, Some(1000)));
    assert_eq!(out.logits.as_deref(), Some("logits"));
    let why = &guess
        .notes
        .iter()
        .find(|n| n.field == "embedding")
        .unwrap()
        .why;
    assert!(why.contains("classifier"), "{why}");
    assert_eq!(guess.manifest.preprocess.mean, [103.939, 116.779, 123.68]);
    assert_eq!(guess.manifest.preprocess.scale, 1.0);

    let tap = |embedding: &str, pool: Option<Pool>| {
        guess_manifest(
            &onnx,
            &InitOptions {
                embedding: Some(embedding.into()),
                pool,
                ..caffe.clone()
            },
        )
    };
    let mean = tap("features.17", None).unwrap();
    assert_eq!(mean.manifest.outputs.pool, Pool::Mean);
    assert_eq!(mean.manifest.outputs.embedding_dim, 320);
    assert!(mean.notes.iter().any(|n| n.field == "pool" && n.confirm));
    let grid = tap("features.17", Some(Pool::Grid(2))).unwrap();
    assert_eq!(grid.manifest.outputs.embedding_dim, 1280);
    assert_eq!(embed_photo(&grid.manifest).ncols(), 1280);
    let err = tap("features.71", None).unwrap_err().to_string();
    assert!(
        err.contains("nearest names") && err.contains("features.7"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Graphs that are not one 3-channel image input are refused, naming what was found.
#[test]
fn refuses_what_is_not_one_rgb_image_input() {
    let dir = scratch("refuse");
    let torch = InitOptions {
        preset: Some(Preset::Torchvision),
        ..InitOptions::default()
    };
    let variant = |name: &str, edit: &dyn Fn(&mut pb::GraphProto)| {
        let mut proto = shipped_proto();
        edit(proto.graph.as_mut().unwrap());
        let onnx = write_model(&dir, name, &proto);
        guess_manifest(&onnx, &torch).unwrap_err()
    };
    let two = variant("two_inputs", &|g| {
        let mut extra = g.input[0].clone();
        extra.name = "mask".into();
        g.input.push(extra);
    });
    assert!(matches!(two, InitError::SeveralInputs(_)), "{two}");
    assert!(two.to_string().contains("input, mask"), "{two}");
    let gray = variant("gray", &|g| dims(&mut g.input[0])[1] = fixed(1));
    assert!(matches!(gray, InitError::Contradiction(_)), "{gray}");
    assert!(gray.to_string().contains("1-channel"), "{gray}");
    let flat = variant("flat", &|g| dims(&mut g.input[0]).truncate(2));
    assert!(matches!(flat, InitError::NoImageInput(_)), "{flat}");
    let no_three = variant("no_three", &|g| {
        let d = dims(&mut g.input[0]);
        d[1] = fixed(5);
        d[3] = fixed(5);
    });
    assert!(
        no_three.to_string().contains("no dimension of 3 channels"),
        "{no_three}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
