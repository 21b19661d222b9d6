//! Lowering tests: shape inference and folding on small hand-built graphs, refusals, and
//! single-op graphs run by the reference executor against tract.

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::prelude::Framework;

use super::{lower, Result, Unsupported};
use crate::backend::plan::reference;
use crate::backend::plan::{Op, Plan, ValueKind, WeightData, Window};

fn attr(name: &str, kind: AttributeType, fill: impl FnOnce(&mut pb::AttributeProto)) -> pb::AttributeProto {
    let mut a = pb::AttributeProto { name: name.into(), r#type: kind as i32, ..Default::default() };
    fill(&mut a);
    a
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    attr(name, AttributeType::Int, |a| a.i = v)
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    attr(name, AttributeType::Ints, |a| a.ints = v.to_vec())
}

fn string(name: &str, v: &str) -> pb::AttributeProto {
    attr(name, AttributeType::String, |a| a.s = v.as_bytes().to_vec())
}

fn floats(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn int64s(name: &str, values: &[i64]) -> pb::TensorProto {
    let dims = vec![values.len() as i64];
    pb::TensorProto { name: name.into(), dims, data_type: 7, int64_data: values.to_vec(), ..Default::default() }
}

/// An int8 (`data_type` 3) or uint8 (2) tensor.
fn bytes(name: &str, data_type: i32, dims: &[i64], values: &[i32]) -> pb::TensorProto {
    let (name, dims, int32_data) = (name.into(), dims.to_vec(), values.to_vec());
    pb::TensorProto { name, dims, data_type, int32_data, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: Option<&[usize]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let dim = |&d: &usize| Dimension { value: Some(Dim::DimValue(d as i64)), ..Default::default() };
    let shape = shape.map(|s| pb::TensorShapeProto { dim: s.iter().map(dim).collect() });
    let tensor = pb::type_proto::Tensor { elem_type: 1, shape };
    let r#type = Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() });
    pb::ValueInfoProto { name: name.into(), r#type, ..Default::default() }
}

/// A model at `opset` of `nodes` on float inputs of static shapes; its output is `y`.
fn model(
    opset: i64,
    inputs: &[(&str, &[usize])],
    initializer: Vec<pb::TensorProto>,
    nodes: Vec<pb::NodeProto>,
) -> pb::ModelProto {
    let graph = pb::GraphProto {
        node: nodes,
        initializer,
        input: inputs.iter().map(|(name, shape)| value_info(name, Some(shape))).collect(),
        output: vec![value_info("y", None)],
        ..Default::default()
    };
    let opset_import = vec![pb::OperatorSetIdProto { domain: String::new(), version: opset }];
    pb::ModelProto { ir_version: 8, opset_import, graph: Some(graph), ..Default::default() }
}

/// One node `op` on input `x` of `shape` (plus `initializer`), output `y`, at opset 17.
fn single(
    op: &str,
    shape: &[usize],
    inputs: &[&str],
    initializer: Vec<pb::TensorProto>,
    attrs: Vec<pb::AttributeProto>,
) -> pb::ModelProto {
    model(17, &[("x", shape)], initializer, vec![node(op, inputs, "y", attrs)])
}

/// `model` encoded by tract's protobuf types and lowered from the bytes, as an engine's are.
fn lower_encoded(model: &pb::ModelProto) -> Result<Plan> {
    lower(&prost::Message::encode_to_vec(model), &[])
}

fn lowered(model: &pb::ModelProto) -> Plan {
    lower_encoded(model).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(model: &pb::ModelProto) -> Unsupported {
    lower_encoded(model).expect_err("the lowering should refuse this graph")
}

/// The single step of a plan.
fn only_step(plan: &Plan) -> &Op {
    assert_eq!(plan.steps.len(), 1, "{:#?}", plan.steps);
    &plan.steps[0].op
}

fn output_shape(plan: &Plan) -> &[usize] {
    &plan.values[plan.outputs[0].1].shape
}

#[test]
fn conv_geometry_from_pads_strides_and_auto_pad() {
    let w = floats("w", &[8, 3, 3, 3], &[0.5; 8 * 27]);
    let explicit = single(
        "Conv",
        &[1, 3, 9, 9],
        &["x", "w"],
        vec![w.clone()],
        vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    );
    let plan = lowered(&explicit);
    assert!(matches!(only_step(&plan), Op::Conv { window: Window { out_h: 5, out_w: 5, pad: [1, 1, 1, 1], .. }, .. }));
    assert_eq!(output_shape(&plan), [1, 8, 5, 5]);
    // SAME_UPPER on 8 with stride 2: 4 outputs need 1 padding row, placed at the end.
    let same = single(
        "Conv",
        &[1, 3, 8, 8],
        &["x", "w"],
        vec![w],
        vec![ints("strides", &[2, 2]), string("auto_pad", "SAME_UPPER")],
    );
    let plan = lowered(&same);
    assert!(matches!(only_step(&plan), Op::Conv { window: Window { out_h: 4, out_w: 4, pad: [0, 0, 1, 1], .. }, .. }));
}

#[test]
fn matmul_broadcasts_batches_and_vectors() {
    let w = floats("w", &[4, 5], &[1.0; 20]);
    let plan = lowered(&single("MatMul", &[2, 3, 4], &["x", "w"], vec![w], vec![]));
    let expected = Op::MatMul { batch: 2, m: 3, n: 5, k: 4, a_batch_stride: 12, b_batch_stride: 0 };
    assert_eq!(only_step(&plan), &expected);
    assert_eq!(output_shape(&plan), [2, 3, 5]);
    let w = floats("w", &[2, 4, 5], &[1.0; 40]);
    let plan = lowered(&single("MatMul", &[4], &["x", "w"], vec![w], vec![]));
    let expected = Op::MatMul { batch: 2, m: 1, n: 5, k: 4, a_batch_stride: 0, b_batch_stride: 20 };
    assert_eq!(only_step(&plan), &expected);
    assert_eq!(output_shape(&plan), [2, 5]);
}

#[test]
fn shape_arithmetic_folds_to_an_alias() {
    // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): no step, an alias [2, 12].
    let nodes = vec![
        node("Shape", &["x"], "s", vec![]),
        node("Gather", &["s", "zero"], "n", vec![int("axis", 0)]),
        node("Unsqueeze", &["n", "axes"], "n1", vec![]),
        node("Concat", &["n1", "minus_one"], "target", vec![int("axis", 0)]),
        node("Reshape", &["x", "target"], "y", vec![]),
    ];
    let zero = pb::TensorProto { name: "zero".into(), data_type: 7, int64_data: vec![0], ..Default::default() };
    let consts = vec![zero, int64s("axes", &[0]), int64s("minus_one", &[-1])];
    let plan = lowered(&model(17, &[("x", &[2, 3, 4])], consts, nodes));
    assert!(plan.steps.is_empty());
    assert_eq!(output_shape(&plan), [2, 12]);
    assert!(matches!(plan.values[plan.outputs[0].1].kind, ValueKind::Alias(0)));
}

#[test]
fn slice_clamps_and_steps_backwards() {
    let consts = vec![
        int64s("starts", &[-1, 1]),
        int64s("ends", &[-100, 100]),
        int64s("axes", &[2, 1]),
        int64s("steps", &[-2, 2]),
    ];
    let plan = lowered(&single("Slice", &[2, 5, 6], &["x", "starts", "ends", "axes", "steps"], consts, vec![]));
    let expected =
        Op::Slice { shape: vec![2, 2, 3], starts: vec![0, 1, 5], steps: vec![1, 2, -2], in_strides: vec![30, 6, 1] };
    assert_eq!(only_step(&plan), &expected);
}

#[test]
fn gather_wraps_negative_indices_and_keeps_their_shape() {
    let indices = pb::TensorProto {
        name: "i".into(),
        dims: vec![2, 2],
        data_type: 7,
        int64_data: vec![-1, 0, 2, 2],
        ..Default::default()
    };
    let plan = lowered(&single("Gather", &[2, 4, 3], &["x", "i"], vec![indices], vec![int("axis", 1)]));
    assert_eq!(only_step(&plan), &Op::Gather { outer: 2, axis_len: 4, inner: 3, indices: vec![3, 0, 2, 2] });
    assert_eq!(output_shape(&plan), [2, 2, 2, 3]);
}

#[test]
fn dead_nodes_leave_no_step() {
    let nodes = vec![node("Relu", &["x"], "unused", vec![]), node("Tanh", &["x"], "y", vec![])];
    let plan = lowered(&model(17, &[("x", &[3])], vec![], nodes));
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.values.len(), 2);
}

#[test]
fn refusals_name_the_node_and_op() {
    let cubic = single(
        "Resize",
        &[1, 1, 4, 4],
        &["x", "", "scales"],
        vec![floats("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
        vec![string("mode", "cubic")],
    );
    let runtime_indices =
        model(17, &[("x", &[4]), ("i", &[2])], vec![], vec![node("Gather", &["x", "i"], "y", vec![])]);
    let unknown = single("Erf", &[4], &["x"], vec![], vec![]);
    let unknown_attribute = single("Softmax", &[4], &["x"], vec![], vec![int("axis", 0), int("future", 1)]);
    let table = [
        (cubic, "Resize", "mode cubic"),
        (runtime_indices, "Gather", "must be a constant"),
        (unknown, "Erf", "no kernel"),
        (unknown_attribute, "Softmax", "attribute `future`"),
    ];
    for (model, op, why) in table {
        let error = refused(&model);
        assert_eq!(error.op, op);
        assert_eq!(error.node, format!("{op}_y"));
        assert!(error.why.contains(why), "{error}");
        assert!(error.to_string().starts_with(&format!("node `{op}_y` (op {op}): ")), "{error}");
    }
}

/// y = x + Where(Range(0, 4, 1) == 2, 1, ConstantOfShape([4], 0.5)) · Cast(Range(0, 4, 1)): all
/// but the Add folds.
fn folded_constants_model() -> pb::ModelProto {
    let scalar = |name: &str, v: i64| pb::TensorProto {
        name: name.into(),
        data_type: 7,
        int64_data: vec![v],
        ..Default::default()
    };
    let half = attr("value", AttributeType::Tensor, |a| a.t = Some(floats("", &[1], &[0.5])));
    let nodes = vec![
        node("Range", &["zero", "four", "one"], "r", vec![]),
        node("Equal", &["r", "two"], "is_two", vec![]),
        node("ConstantOfShape", &["len"], "halves", vec![half]),
        node("Where", &["is_two", "one_f", "halves"], "w", vec![]),
        node("Cast", &["r"], "rf", vec![int("to", 1)]),
        node("Mul", &["w", "rf"], "scaled", vec![]),
        node("Add", &["x", "scaled"], "y", vec![]),
    ];
    let consts = vec![
        scalar("zero", 0),
        scalar("four", 4),
        scalar("one", 1),
        scalar("two", 2),
        int64s("len", &[4]),
        floats("one_f", &[], &[1.0]),
    ];
    model(17, &[("x", &[3, 4])], consts, nodes)
}

#[test]
fn constant_subgraphs_fold() {
    let plan = lowered(&folded_constants_model());
    let Op::Binary { .. } = only_step(&plan) else { panic!("{:?}", plan.steps) };
    let weight = plan.values.iter().find_map(|v| match &v.kind {
        ValueKind::Weight(WeightData::F32(data)) => Some(data.clone()),
        _ => None,
    });
    assert_eq!(weight, Some(vec![0.0, 0.5, 2.0, 1.5]));
}

fn engine_graph(engine: &str, tag: crate::format::Tag) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(engine);
    let file = crate::format::EngineFile::open(&path).expect("bundled engine");
    file.section(tag).expect("graph section").to_vec()
}

/// The int8 engine lowers: each activation's QuantizeLinear/DequantizeLinear pair is one Quantize
/// step and the quantised weights stay int8, with their scales.
#[test]
fn int8_engine_lowers_its_pairs_to_quantize_steps_and_keeps_its_int8_weights() {
    for (tag, pairs) in [(crate::format::Tag::ENCODER, 22), (crate::format::Tag::DECODER, 29)] {
        let plan = lower(&engine_graph("segicl-ref-int8.plan", tag), &[]).unwrap_or_else(|e| panic!("{e}"));
        let quantize = plan
            .steps
            .iter()
            .filter(|s| matches!(s.op, Op::Unary { kind: super::UnaryKind::Quantize { .. }, .. }))
            .count();
        assert_eq!(quantize, pairs, "{tag:?}");
        let int8: Vec<_> = plan
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                ValueKind::Weight(WeightData::I8(q)) => Some((v, q)),
                _ => None,
            })
            .collect();
        assert!(int8.len() >= 7, "{tag:?}: {} int8 weights", int8.len());
        for (value, q) in int8 {
            // Per output channel: a Conv's first axis, a MatMul weight's last.
            let channels = [value.shape[0], value.shape[value.shape.len() - 1]];
            assert!(channels.contains(&q.scales.len()), "{:?} with {} scales", value.shape, q.scales.len());
            assert!(q.values.iter().any(|&v| v.unsigned_abs() == 127), "symmetric: the largest weight is ±127");
        }
    }
}

#[test]
fn quantisation_that_the_plan_cannot_express_is_refused() {
    let qdq = |q_scale: f32, dq_scale: f32| {
        model(
            13,
            &[("x", &[2, 3])],
            vec![floats("s", &[], &[q_scale]), floats("t", &[], &[dq_scale]), bytes("z", 2, &[], &[3])],
            vec![
                node("QuantizeLinear", &["x", "s", "z"], "q", vec![]),
                node("DequantizeLinear", &["q", "t", "z"], "y", vec![]),
            ],
        )
    };
    let why = |model: &pb::ModelProto| refused(model).to_string();
    assert!(why(&qdq(0.1, 0.2)).contains("differ from its QuantizeLinear's"), "{}", why(&qdq(0.1, 0.2)));
    assert!(why(&qdq(0.0, 0.0)).contains("scale 0 is not finite and positive"));
    let quantised_output = model(
        13,
        &[("x", &[2, 3])],
        vec![floats("s", &[], &[0.1])],
        vec![node("QuantizeLinear", &["x", "s"], "y", vec![])],
    );
    assert!(why(&quantised_output).contains("only DequantizeLinear reads"), "{}", why(&quantised_output));
}

#[test]
fn fp16_engine_keeps_its_weights_in_f16() {
    let decoder = engine_graph("segicl-ref-fp16.plan", crate::format::Tag::DECODER);
    let plan = lower(&decoder, &[]).unwrap_or_else(|e| panic!("{e}"));
    let (mut halves, mut large_floats) = (0, 0);
    for value in &plan.values {
        match &value.kind {
            ValueKind::Weight(WeightData::F16(_)) => halves += 1,
            ValueKind::Weight(WeightData::F32(data)) if data.len() > 64 => large_floats += 1,
            _ => {}
        }
    }
    assert!(halves >= 40, "{halves} f16 weights");
    assert_eq!(large_floats, 0, "every large weight of the fp16 engine stays f16");
}

/// Single-op graphs covering attributes the bundled engines do not use, each run by the
/// reference executor and by tract.
fn op_cases() -> Vec<(&'static str, pb::ModelProto)> {
    let w = |name: &str, dims: &[i64]| {
        let len = dims.iter().product::<i64>() as usize;
        floats(name, dims, &reference::noise(len, len as u64, [-1.0, 1.0]))
    };
    let scales = |s: &[f32]| floats("scales", &[4], s);
    let sizes = |s: &[i64]| int64s("sizes", s);
    let resize = |extra: pb::TensorProto, input: &[&'static str], attrs| {
        single("Resize", &[1, 2, 5, 6], input, vec![extra], attrs)
    };
    vec![
        (
            "conv strided dilated grouped",
            single(
                "Conv",
                &[1, 4, 9, 10],
                &["x", "w", "b"],
                vec![w("w", &[6, 2, 3, 3]), w("b", &[6])],
                vec![
                    int("group", 2),
                    ints("strides", &[2, 1]),
                    ints("dilations", &[2, 1]),
                    ints("pads", &[1, 0, 1, 2]),
                ],
            ),
        ),
        (
            "conv same_lower",
            single(
                "Conv",
                &[1, 2, 8, 7],
                &["x", "w"],
                vec![w("w", &[3, 2, 3, 3])],
                vec![string("auto_pad", "SAME_LOWER"), ints("strides", &[2, 2])],
            ),
        ),
        ("matmul partial batch", single("MatMul", &[2, 3, 4, 5], &["x", "w"], vec![w("w", &[3, 5, 6])], vec![])),
        (
            "avgpool pads excluded",
            single(
                "AveragePool",
                &[1, 2, 7, 7],
                &["x"],
                vec![],
                vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
            ),
        ),
        (
            "avgpool pads counted",
            single(
                "AveragePool",
                &[1, 2, 7, 7],
                &["x"],
                vec![],
                vec![
                    ints("kernel_shape", &[3, 3]),
                    ints("strides", &[2, 2]),
                    ints("pads", &[1, 1, 1, 1]),
                    int("count_include_pad", 1),
                ],
            ),
        ),
        (
            "maxpool",
            single(
                "MaxPool",
                &[1, 2, 7, 6],
                &["x"],
                vec![],
                vec![ints("kernel_shape", &[3, 2]), ints("strides", &[2, 1]), ints("pads", &[1, 0, 1, 1])],
            ),
        ),
        (
            "reducemean over a unit gap",
            single("ReduceMean", &[2, 3, 1, 4], &["x"], vec![], vec![ints("axes", &[1, 3]), int("keepdims", 0)]),
        ),
        ("reducemax last", single("ReduceMax", &[2, 3, 4], &["x"], vec![], vec![ints("axes", &[-1])])),
        ("reducel2 all", single("ReduceL2", &[2, 3, 4], &["x"], vec![], vec![int("keepdims", 0)])),
        (
            "reducesum axes input",
            single("ReduceSum", &[2, 3, 4], &["x", "axes"], vec![int64s("axes", &[0, 1])], vec![]),
        ),
        ("softmax axis 1", single("Softmax", &[2, 3, 4], &["x"], vec![], vec![int("axis", 1)])),
        ("softmax opset 11", model(11, &[("x", &[2, 3, 4])], vec![], vec![node("Softmax", &["x"], "y", vec![])])),
        (
            "layernorm two axes",
            single(
                "LayerNormalization",
                &[2, 3, 4],
                &["x", "s", "b"],
                vec![w("s", &[3, 4]), w("b", &[3, 4])],
                vec![int("axis", -2)],
            ),
        ),
        (
            "resize nearest asymmetric",
            resize(
                scales(&[1.0, 1.0, 2.0, 3.0]),
                &["x", "", "scales"],
                vec![string("coordinate_transformation_mode", "asymmetric")],
            ),
        ),
        ("resize nearest half pixel down", resize(sizes(&[1, 2, 3, 4]), &["x", "", "", "sizes"], vec![])),
        (
            "resize linear align corners",
            resize(
                sizes(&[1, 2, 9, 4]),
                &["x", "", "", "sizes"],
                vec![string("mode", "linear"), string("coordinate_transformation_mode", "align_corners")],
            ),
        ),
        (
            "resize linear pytorch half pixel",
            resize(
                sizes(&[1, 2, 3, 11]),
                &["x", "", "", "sizes"],
                vec![string("mode", "linear"), string("coordinate_transformation_mode", "pytorch_half_pixel")],
            ),
        ),
        ("transpose", single("Transpose", &[2, 3, 4], &["x"], vec![], vec![ints("perm", &[2, 0, 1])])),
        (
            "concat runtime and constant",
            single("Concat", &[2, 3, 4], &["x", "c"], vec![w("c", &[2, 3, 2])], vec![int("axis", -1)]),
        ),
        (
            "slice backwards",
            single(
                "Slice",
                &[2, 5, 6],
                &["x", "starts", "ends", "axes", "steps"],
                vec![
                    int64s("starts", &[-1, 1]),
                    int64s("ends", &[-100, 100]),
                    int64s("axes", &[2, 1]),
                    int64s("steps", &[-2, 2]),
                ],
                vec![],
            ),
        ),
        ("gather", single("Gather", &[2, 4, 3], &["x", "i"], vec![int64s("i", &[-1, 0, 2, 2])], vec![int("axis", 1)])),
        (
            "pad constant",
            single(
                "Pad",
                &[1, 2, 4, 5],
                &["x", "pads", "value"],
                vec![int64s("pads", &[0, 1, 2, 0, 0, 2, 1, 1]), floats("value", &[], &[0.5])],
                vec![],
            ),
        ),
        (
            "pad edge",
            single(
                "Pad",
                &[1, 2, 4, 5],
                &["x", "pads"],
                vec![int64s("pads", &[0, 0, 2, 1, 0, 0, 1, 3])],
                vec![string("mode", "edge")],
            ),
        ),
        (
            "pad reflect",
            single(
                "Pad",
                &[1, 2, 4, 5],
                &["x", "pads"],
                vec![int64s("pads", &[0, 0, 2, 1, 0, 0, 1, 3])],
                vec![string("mode", "reflect")],
            ),
        ),
        ("expand", single("Expand", &[3, 1], &["x", "shape"], vec![int64s("shape", &[2, 3, 4])], vec![])),
        (
            "clip",
            single(
                "Clip",
                &[2, 3],
                &["x", "lo", "hi"],
                vec![floats("lo", &[], &[-0.3]), floats("hi", &[], &[0.4])],
                vec![],
            ),
        ),
        ("sign", single("Sign", &[2, 3], &["x"], vec![], vec![])),
        ("sigmoid", single("Sigmoid", &[2, 3], &["x"], vec![], vec![])),
        ("exp", single("Exp", &[2, 3], &["x"], vec![], vec![])),
        ("abs", single("Abs", &[2, 3], &["x"], vec![], vec![])),
        ("neg", single("Neg", &[2, 3], &["x"], vec![], vec![])),
        ("max of three", single("Max", &[2, 3], &["x", "a", "b"], vec![w("a", &[3]), w("b", &[2, 1])], vec![])),
        ("sum of three", single("Sum", &[2, 3], &["x", "a", "b"], vec![w("a", &[3]), w("b", &[2, 1])], vec![])),
        ("pow", single("Pow", &[2, 3], &["x", "e"], vec![floats("e", &[], &[2.0])], vec![])),
        ("div broadcast", single("Div", &[2, 3], &["x", "d"], vec![floats("d", &[2, 1], &[2.0, -4.0])], vec![])),
        ("flatten", single("Flatten", &[2, 3, 4], &["x"], vec![], vec![int("axis", -1)])),
        ("folded constants", folded_constants_model()),
        (
            "quantize dequantize uint8, clamped both ways",
            model(
                13,
                &[("x", &[3, 4])],
                vec![floats("s", &[], &[0.005]), bytes("z", 2, &[], &[100])],
                vec![
                    node("QuantizeLinear", &["x", "s", "z"], "q", vec![]),
                    node("DequantizeLinear", &["q", "s", "z"], "y", vec![]),
                ],
            ),
        ),
        (
            "quantize int8, reshape, dequantize",
            model(
                13,
                &[("x", &[3, 4])],
                vec![floats("s", &[], &[0.004]), bytes("z", 3, &[], &[-3]), int64s("shape", &[4, 3])],
                vec![
                    node("QuantizeLinear", &["x", "s", "z"], "q", vec![]),
                    node("Reshape", &["q", "shape"], "r", vec![]),
                    node("DequantizeLinear", &["r", "s", "z"], "y", vec![]),
                ],
            ),
        ),
        (
            "matmul of a per-column int8 weight",
            model(
                13,
                &[("x", &[2, 4])],
                vec![
                    bytes("wq", 3, &[4, 3], &[127, -5, 0, 3, 90, -127, -64, 1, 2, 7, -8, 33]),
                    floats("ws", &[3], &[0.01, 0.002, 0.3]),
                    bytes("wz", 3, &[3], &[0, 0, 0]),
                ],
                vec![
                    node("DequantizeLinear", &["wq", "ws", "wz"], "w", vec![int("axis", 1)]),
                    node("MatMul", &["x", "w"], "y", vec![]),
                ],
            ),
        ),
    ]
}

#[test]
fn single_ops_match_tract() {
    // Tolerance: |reference - tract| ≤ 1e-4 · max(1, max |tract|).
    let mut failures = Vec::new();
    for (label, model) in op_cases() {
        let plan = lowered(&model);
        let inputs: Vec<Vec<f32>> =
            plan.inputs.iter().map(|&(_, id)| reference::noise(plan.values[id].len(), 7, [-1.0, 1.0])).collect();
        let inputs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let ours = reference::run(&plan, &inputs);
        let tract_model = tract_onnx::onnx().model_for_proto_model(&model).expect("tract loads the graph");
        let theirs = reference::tract(tract_model, &plan, &inputs);
        let (diff, scale) = reference::difference(&ours[0], &theirs[0]);
        if diff > 1e-4 * scale.max(1.0) {
            failures.push(format!("{label}: max |Δ| = {diff} (scale {scale}); steps {:?}", plan.steps));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
