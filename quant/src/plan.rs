//! What happens to each linear weight of a checkpoint, decided once from the recipe: the
//! writer, the calibrated pipeline and the summary all read this instead of re-walking the
//! recipe's stages and patterns.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Context, Result};
use lmq_runtime::packed::ActQuant;
use lmq_runtime::weights::WeightSource;

use crate::awq::AwqOptions;
use crate::gptq::GptqOptions;
use crate::pipeline::hessian::HessianOptions;
use crate::recipe::{linear_module, Pass, Recipe};
use crate::scheme::QuantScheme;

/// How one linear weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearMethod {
    /// Round to nearest: needs only the weight.
    Rtn(QuantScheme),
    /// GPTQ: needs the Hessian of the layer's inputs, accumulated as the options say.
    Gptq(GptqOptions, HessianOptions),
}

impl LinearMethod {
    /// The integer grid the codes are written on.
    pub fn scheme(&self) -> QuantScheme {
        match self {
            Self::Rtn(s) => *s,
            Self::Gptq(o, _) => o.scheme,
        }
    }

    /// How the Hessian is accumulated, for methods that need one.
    pub fn hessian_options(&self) -> Option<HessianOptions> {
        match self {
            Self::Gptq(_, h) => Some(*h),
            Self::Rtn(_) => None,
        }
    }

    /// Whether calibration statistics (a Hessian) are needed.
    pub fn needs_hessian(&self) -> bool {
        matches!(self, Self::Gptq(..))
    }

    /// compressed-tensors' `actorder` for the weights this method writes: `group` means the
    /// checkpoint carries `weight_g_idx`; `static` orders columns during quantization but
    /// keeps natural groups (no `g_idx`).
    pub fn actorder(&self) -> Option<&'static str> {
        match self {
            Self::Gptq(o, _) if o.act_order && o.static_groups => Some("static"),
            Self::Gptq(o, _) if o.act_order => Some("group"),
            _ => None,
        }
    }

    /// Short label for summaries (`gptq`, `rtn`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rtn(_) => "rtn",
            Self::Gptq(..) => "gptq",
        }
    }
}

/// AWQ's share of the plan: the linears it may rescale and the scheme each one's searches
/// fake-quantize it with.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqPlan {
    pub options: AwqOptions,
    /// Weight name (`….weight`) → search scheme.
    pub schemes: BTreeMap<String, QuantScheme>,
}

/// SmoothQuant's share of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothPlan {
    /// `α` for input_layernorm → q/k/v.
    pub alpha_attention: f32,
    /// `α` for post_attention_layernorm → gate/up.
    pub alpha_mlp: f32,
    /// `α` for up_proj → down_proj, when that mapping is smoothed too.
    pub alpha_down: Option<f32>,
    /// The linears it may rescale (a mapping is smoothed only if all its linears are here).
    pub targets: BTreeSet<String>,
    /// When set, `α` is searched per layer and mapping instead of taken from above.
    pub search: Option<AlphaSearch>,
}

/// SmoothQuant's per-layer `α` search: what to simulate for each rescaled linear.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaSearch {
    /// Steps over `[0, 1]`.
    pub grid: usize,
    /// Calibration tokens the block losses are summed over.
    pub tokens: usize,
    /// Weight name → the scheme its weights are rounded with, and how its inputs are
    /// rounded to int8 per token at run time (W8A8; `None`: they stay float).
    pub schemes: BTreeMap<String, (QuantScheme, Option<ActQuant>)>,
}

/// The quantization decided for a whole checkpoint.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    /// AWQ scaling and clipping applied before quantization, if the recipe has an `awq` pass.
    pub awq: Option<AwqPlan>,
    /// SmoothQuant scaling applied before AWQ and quantization, if the recipe has one.
    pub smoothquant: Option<SmoothPlan>,
    /// Every quantized weight (`….weight` tensor name) and its method.
    pub linears: BTreeMap<String, LinearMethod>,
    /// compressed-tensors `config_groups`: one entry per pass, with its method and modules.
    pub groups: Vec<(LinearMethod, Vec<String>)>,
    /// Linear modules left in floating point (compressed-tensors `ignore`).
    pub ignore: Vec<String>,
    /// Quantized weights whose inputs are quantized to int8 per token at run time (W8A8),
    /// written in compressed-tensors' `int-quantized` format, and how.
    pub int8_activations: BTreeMap<String, ActQuant>,
}

/// The module name a tied vocabulary projection is targeted by.
const TIED_HEAD: &str = "lm_head.weight";
/// The tensor a tied vocabulary projection is stored in.
const TIED_EMBEDDING: &str = "model.embed_tokens.weight";

impl QuantPlan {
    /// Resolves the recipe's passes against the checkpoint's tensors. Errors name the recipe
    /// file and the pass key; a group size that does not divide a weight's input dimension
    /// names the tensor and the sizes that would work.
    pub fn from_recipe(recipe: &Recipe, weights: &dyn WeightSource, tied: bool) -> Result<Self> {
        let mut names = weights.names();
        // A tied lm_head is the embedding matrix: offer it to the targets under its module
        // name, and quantize the embedding when an rtn pass names it (below).
        let offer_head = tied && !names.iter().any(|n| n == TIED_HEAD);
        if offer_head {
            names.push(TIED_HEAD.to_owned());
        }
        let mut targets = recipe.resolve_targets(&names)?;
        if offer_head {
            for t in &mut targets {
                let pass = &recipe.stages[t.stage].passes[t.pass];
                // Only a pass that names lm_head quantizes the tied matrix; `Linear` alone
                // leaves it in floating point, as it always did.
                let named = pass
                    .args()
                    .targets()
                    .iter()
                    .any(|p| p.to_string().contains("lm_head"));
                match pass {
                    Pass::Rtn(_) if named => {
                        for name in &mut t.tensors {
                            if name == TIED_HEAD {
                                *name = TIED_EMBEDDING.to_owned();
                            }
                        }
                    }
                    Pass::Gptq(_) if named && t.tensors.iter().any(|n| n == TIED_HEAD) => {
                        return Err(anyhow!(
                            "{}: {}: lm_head is tied to the embedding here, which only an rtn \
                             pass can quantize",
                            recipe.path.display(),
                            t.key
                        ));
                    }
                    _ => t.tensors.retain(|n| n != TIED_HEAD),
                }
            }
        }
        let mut linears = BTreeMap::new();
        let mut groups = Vec::new();
        let mut int8_activations = BTreeMap::new();
        let mut awq_passes = Vec::new();
        let mut smoothquant: Option<SmoothPlan> = None;
        let mut smooth_key = None;
        for t in &targets {
            let pass = &recipe.stages[t.stage].passes[t.pass];
            let at = |e: String| anyhow!("{}: {}: {e}", recipe.path.display(), t.key);
            let method = match pass {
                Pass::Rtn(args) => LinearMethod::Rtn(args.scheme().map_err(at)?),
                Pass::Gptq(args) => {
                    LinearMethod::Gptq(args.options().map_err(at)?, args.hessian_options())
                }
                Pass::Awq(args) => {
                    awq_passes.push((t, args));
                    continue;
                }
                Pass::SmoothQuant(args) => {
                    if smoothquant.is_some() {
                        return Err(at("a recipe takes one smoothquant pass".into()));
                    }
                    let (alpha_attention, alpha_mlp, alpha_down) = args.alphas();
                    smoothquant = Some(SmoothPlan {
                        alpha_attention,
                        alpha_mlp,
                        alpha_down: args.smooth_down.then_some(alpha_down),
                        targets: t.tensors.iter().cloned().collect(),
                        search: args.alpha_search.map(|a| AlphaSearch {
                            grid: a.grid.0,
                            tokens: a.tokens.0,
                            schemes: BTreeMap::new(),
                        }),
                    });
                    smooth_key = Some(t.key.clone());
                    continue;
                }
            };
            let mut modules = Vec::new();
            for name in &t.tensors {
                let shape = weights.shape(name).context("target without shape")?;
                method
                    .scheme()
                    .validate_for(name, shape[1])
                    .map_err(|e| at(e.to_string()))?;
                linears.insert(name.clone(), method);
                if let Some(a) = pass.args().int8_activations() {
                    int8_activations.insert(name.clone(), a);
                }
                modules.push(name.trim_end_matches(".weight").to_owned());
            }
            groups.push((method, modules));
        }
        let mut ignore: Vec<String> = names
            .iter()
            .filter(|n| linear_module(n).is_some() && !linears.contains_key(*n))
            .map(|n| n.trim_end_matches(".weight").to_owned())
            .collect();
        if tied && !ignore.iter().any(|m| m == "lm_head") {
            ignore.push("lm_head".into());
        }
        // The α search simulates what the later passes do to each smoothed linear.
        if let Some(sp) = &mut smoothquant {
            if let Some(search) = &mut sp.search {
                for name in &sp.targets {
                    let Some(m) = linears.get(name) else {
                        return Err(anyhow!(
                            "{}: {}: {name} is not quantized by any pass, so the alpha search \
                             has nothing to simulate: `ignore` it in the smoothquant pass",
                            recipe.path.display(),
                            smooth_key.as_deref().unwrap_or("smoothquant")
                        ));
                    };
                    search.schemes.insert(
                        name.clone(),
                        (m.scheme(), int8_activations.get(name).copied()),
                    );
                }
            }
        }
        let awq = match awq_passes.as_slice() {
            [] => None,
            [(t, args)] => {
                let at = |e: String| anyhow!("{}: {}: {e}", recipe.path.display(), t.key);
                let own = args.own_scheme().transpose().map_err(at)?;
                let mut schemes = BTreeMap::new();
                for name in &t.tensors {
                    let scheme = match (own, linears.get(name)) {
                        (Some(s), _) => s,
                        (None, Some(m)) => m.scheme(),
                        (None, None) => {
                            return Err(at(format!(
                                "{name} is not quantized by any pass, so AWQ has no scheme to \
                                 search with: give the awq pass a `scheme`, or `ignore` it"
                            )))
                        }
                    };
                    let shape = weights.shape(name).context("target without shape")?;
                    scheme
                        .validate_for(name, shape[1])
                        .map_err(|e| at(e.to_string()))?;
                    schemes.insert(name.clone(), scheme);
                }
                Some(AwqPlan {
                    options: args.options(),
                    schemes,
                })
            }
            [_, (t, _), ..] => {
                return Err(anyhow!(
                    "{}: {}: a recipe takes one awq pass (use its `targets`/`ignore`)",
                    recipe.path.display(),
                    t.key
                ))
            }
        };
        Ok(Self {
            awq,
            smoothquant,
            int8_activations,
            linears,
            groups,
            ignore,
        })
    }

    /// Whether any weight needs calibration activations.
    pub fn needs_calibration(&self) -> bool {
        self.awq.is_some()
            || self.smoothquant.is_some()
            || self.linears.values().any(LinearMethod::needs_hessian)
    }

    /// The method for `tensor`, if it is quantized.
    pub fn method(&self, tensor: &str) -> Option<&LinearMethod> {
        self.linears.get(tensor)
    }
}
