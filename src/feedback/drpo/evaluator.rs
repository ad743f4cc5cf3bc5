//! The evaluator: the dynamic reward of DRPO.
//!
//! 1. **Aspects**: per query, the evaluator analyses the query (topic,
//!    intent, ambiguities, format, challenges) and picks 2–5 aspects
//!    ([`MIN_ASPECTS`]–[`MAX_ASPECTS`]) from the list, or names new ones, with
//!    its reasoning (`optimize_aspects.jinja`). A reply naming more than 5
//!    keeps the first 5; one naming fewer than 2 is unusable. Asked once
//!    per distinct query text for the whole run.
//! 2. **Answer**: the base model answers `[system: prompt] + examples +
//!    [user: query]` at the base role's parameters, the examples being the
//!    `k` best BM25 matches of the bank ([`crate::feedback::examples`]).
//! 3. **Score**: the evaluator scores each chosen aspect 1–5 with a
//!    rationale, as JSON (`optimize_score.jinja`), given the query analysis
//!    and the reasoning that chose the aspects, as in the paper. The reward
//!    is the mean score. An answer is *satisfied* when every score is 5 or
//!    the mean is above 4.5 (the paper's rule for skipping optimisation).
//!
//! ## Fallbacks
//!
//! * **Aspect choice** falls back to a default set (Helpfulness, Clarity,
//!   Factuality), recorded as `fallback` in `search.jsonl`.
//! * **Scoring** falls back to first-token log-probabilities: one request
//!   per aspect (`optimize_score_digit.jinja`, ending "Rating (1-5):",
//!   temperature 0, at most [`DIGIT_MAX_TOKENS`] tokens, the top
//!   [`TOP_LOGPROBS`] first-token candidates asked for). The candidates
//!   that are a digit 1–5 (spaces trimmed) are renormalised and the score
//!   is the expected value Σ p(k)·k — a fraction, recorded with `"method":
//!   "logprobs"`, the digits' share of the probability (`p_digits`) and no
//!   rationale. A score needs `p_digits` ≥ [`MIN_DIGIT_MASS`]: below it the
//!   model was not answering with a digit, and renormalising noise would
//!   invent a score. Small local models (SmolLM2-135M) never write the JSON
//!   but do put some probability on digits, so a local search runs end to
//!   end. When the endpoint returns no log-probabilities (Anthropic, Gemini,
//!   HF) or an aspect has too little digit mass, the candidate is dropped
//!   with both reasons. These requests go through their own engine
//!   (`journal-evaluator-logprobs.jsonl`) that keeps a reply cut off at
//!   [`DIGIT_MAX_TOKENS`]: only its first token matters.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    get_ci, json_object, Critic, Role, Unusable, Usable, DIGIT_MAX_TOKENS, MAX_ASPECTS,
    MIN_ASPECTS, MIN_DIGIT_MASS, TOP_LOGPROBS,
};
use crate::engine::ItemError;
use crate::input::PromptRecord;
use crate::provider::{ChatRequest, GenParams, Message, TokenLogprob};

/// Used when the evaluator never names aspects usably.
const FALLBACK_ASPECTS: [&str; 3] = ["Helpfulness", "Clarity", "Factuality"];

/// One aspect of a good answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Aspect {
    pub name: String,
    pub description: String,
}

/// The shipped aspect list (`principles/aspects.json`).
pub fn default_aspects() -> Vec<Aspect> {
    serde_json::from_str(include_str!("../../../principles/aspects.json")).unwrap_or_default()
}

/// The evaluator's choice of aspects for one query.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AspectChoice {
    pub aspects: Vec<Aspect>,
    /// Why these aspects (empty for the fallback set or a reply without it).
    pub reasoning: String,
    /// The query analysis as `field: text` lines, in the reply's order.
    pub analysis: Vec<String>,
    /// Why the fallback set was used, if it was.
    pub fallback: Option<String>,
}

/// How a score was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMethod {
    /// The evaluator's JSON reply: an integer with a rationale.
    Json,
    /// Expected digit under the first-token log-probabilities.
    Logprobs,
}

/// One aspect's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AspectScore {
    pub aspect: String,
    /// 1–5: an integer from JSON, a fraction from log-probabilities.
    #[serde(serialize_with = "ser_score")]
    pub score: f64,
    /// Empty for log-probability scores.
    pub rationale: String,
    pub method: ScoreMethod,
    /// Log-probability scores: the share of the first-token probability on
    /// the digits 1–5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_digits: Option<f64>,
}

/// Whole scores as integers (as the evaluator wrote them), others to four
/// decimals.
fn ser_score<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && (0.0..=255.0).contains(v) {
        s.serialize_u8(*v as u8)
    } else {
        s.serialize_f64((v * 10_000.0).round() / 10_000.0)
    }
}

/// A scored answer.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub answer: String,
    pub scores: Vec<AspectScore>,
    pub reward: f64,
}

impl Evaluation {
    /// Every score 5, or the mean above 4.5: nothing left to optimise.
    pub fn satisfied(&self) -> bool {
        self.scores.iter().all(|s| s.score == 5.0) || self.reward > 4.5
    }
}

/// A 1–5 score from a number or a numeric string.
fn score_of(v: &Value) -> Option<u8> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.fract() == 0.0 && (1.0..=5.0).contains(&f)).then_some(f as u8)
}

/// One named aspect of a reply: a name, or a `{name, description}` object.
fn named_aspect(item: &Value, known: &[Aspect]) -> Option<Aspect> {
    let (name, desc) = match item {
        Value::String(s) => (s.trim().to_string(), None),
        Value::Object(o) => (
            o.get("name")?.as_str()?.trim().to_string(),
            o.get("description").and_then(Value::as_str),
        ),
        _ => return None,
    };
    if name.is_empty() || name.len() > 60 {
        return None;
    }
    Some(
        match known.iter().find(|a| a.name.eq_ignore_ascii_case(&name)) {
            Some(a) => a.clone(),
            None => Aspect {
                description: desc
                    .unwrap_or("An aspect the evaluator named for this query.")
                    .to_string(),
                name,
            },
        },
    )
}

/// The `field: text` lines of the query analysis object.
fn analysis_lines(v: Option<&Value>) -> Vec<String> {
    let Some(Value::Object(o)) = v else {
        return Vec::new();
    };
    o.iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.trim().to_string(),
                Value::Null => return None,
                other => other.to_string(),
            };
            (!text.is_empty()).then(|| format!("{}: {text}", k.replace('_', " ")))
        })
        .collect()
}

/// The evaluator's aspect choice: the paper's shape `{"query_analysis":
/// {...}, "aspects_selection": {"reasoning", "selected_aspects": [...]}}`,
/// or the short `{"aspects": [...]}`. Known names take the list's spelling
/// and description; others are new aspects.
pub fn parse_aspects(text: &str, known: &[Aspect]) -> Usable<AspectChoice> {
    let m = json_object(text)?;
    let selection: Option<&Map<String, Value>> =
        get_ci(&m, "aspects_selection").and_then(Value::as_object);
    let holder = selection.unwrap_or(&m);
    let list = get_ci(holder, "selected_aspects")
        .or_else(|| get_ci(holder, "aspects"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Unusable::Missing("`aspects_selection.selected_aspects` (or `aspects`) array".into())
        })?;
    let mut out: Vec<Aspect> = Vec::new();
    for a in list.iter().filter_map(|i| named_aspect(i, known)) {
        if !out.iter().any(|o| o.name.eq_ignore_ascii_case(&a.name)) {
            out.push(a);
        }
    }
    if out.len() < MIN_ASPECTS {
        return Err(Unusable::invalid(
            "aspects",
            format!(
                "{} usable aspect(s) named (at least {MIN_ASPECTS})",
                out.len()
            ),
        ));
    }
    out.truncate(MAX_ASPECTS);
    let reasoning = get_ci(holder, "reasoning")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(AspectChoice {
        aspects: out,
        reasoning,
        analysis: analysis_lines(get_ci(&m, "query_analysis")),
        fallback: None,
    })
}

/// The evaluator's scores: one key per aspect holding `{"score", "rationale"}`
/// (or a bare number), or `{"scores": [{"aspect", "score", "rationale"}]}`.
/// Every chosen aspect needs an integer score 1–5.
pub fn parse_scores(text: &str, aspects: &[Aspect]) -> Usable<Vec<AspectScore>> {
    let m = json_object(text)?;
    let listed: Option<Map<String, Value>> = get_ci(&m, "scores").and_then(|v| match v {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| {
                    let name = i.get("aspect").and_then(Value::as_str)?;
                    Some((name.to_string(), i.clone()))
                })
                .collect(),
        ),
        Value::Object(o) => Some(o.clone()),
        _ => None,
    });
    let m = listed.unwrap_or(m);
    let mut out = Vec::with_capacity(aspects.len());
    for a in aspects {
        let v = get_ci(&m, &a.name)
            .ok_or_else(|| Unusable::Missing(format!("score for `{}`", a.name)))?;
        let (score, rationale) = match v {
            Value::Object(o) => (
                get_ci(o, "score").and_then(score_of),
                get_ci(o, "rationale")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            other => (score_of(other), String::new()),
        };
        let score = score.ok_or_else(|| {
            Unusable::invalid(format!("`{}`", a.name), "the score is not an integer 1–5")
        })?;
        out.push(AspectScore {
            aspect: a.name.clone(),
            score: f64::from(score),
            rationale,
            method: ScoreMethod::Json,
            p_digits: None,
        });
    }
    Ok(out)
}

/// The digit a first-token candidate is (`"3"`, `" 3"`), if it is 1–5.
fn digit_token(token: &str) -> Option<u8> {
    match token.trim() {
        "1" => Some(1),
        "2" => Some(2),
        "3" => Some(3),
        "4" => Some(4),
        "5" => Some(5),
        _ => None,
    }
}

/// The expected score Σ p(k)·k over the digit candidates (renormalised),
/// and their total probability; `None` when no candidate is a digit 1–5.
pub fn expected_digit(tops: &[TokenLogprob]) -> Option<(f64, f64)> {
    let (mut mass, mut sum) = (0.0f64, 0.0f64);
    for t in tops {
        if !t.logprob.is_finite() {
            continue;
        }
        if let Some(k) = digit_token(&t.token) {
            let p = t.logprob.exp();
            mass += p;
            sum += p * f64::from(k);
        }
    }
    (mass > 0.0).then(|| (sum / mass, mass.min(1.0)))
}

fn mean(scores: &[AspectScore]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().map(|s| s.score).sum::<f64>() / scores.len() as f64
}

impl Critic {
    /// The aspects that matter for `q` (asked once per query text). The
    /// bool says whether this call asked (false: from the cache).
    pub async fn aspects(&mut self, q: &PromptRecord) -> Result<(AspectChoice, bool), ItemError> {
        if let Some(c) = self.chosen.get(&q.text) {
            return Ok((c.clone(), false));
        }
        let text = self.render(
            "optimize_aspects.jinja",
            minijinja::context! {
                query => &q.text, aspects => &self.aspects,
                min_aspects => MIN_ASPECTS, max_aspects => MAX_ASPECTS,
            },
        )?;
        let known = self.aspects.clone();
        let got = self
            .ask(Role::Evaluator, "optimize-aspects", &q.id, &text, |t| {
                parse_aspects(t, &known)
            })
            .await?;
        let choice = match got {
            Ok(c) => c,
            Err(why) => {
                let mut a: Vec<Aspect> = FALLBACK_ASPECTS
                    .iter()
                    .filter_map(|n| self.aspects.iter().find(|a| a.name == *n).cloned())
                    .collect();
                if a.is_empty() {
                    a = self.aspects.iter().take(3).cloned().collect();
                }
                AspectChoice {
                    aspects: a,
                    fallback: Some(why.to_string()),
                    ..AspectChoice::default()
                }
            }
        };
        self.chosen.insert(q.text.clone(), choice.clone());
        Ok((choice, true))
    }

    /// The base model's request for `query` under `prompt`: the system
    /// prompt, the `k` best-matching examples as turns, the query.
    pub fn answer_request(&self, prompt: &str, query: &str) -> ChatRequest {
        let mut messages = vec![Message::system(prompt)];
        messages.extend(self.retriever.turns(query, self.k));
        messages.push(Message::user(query));
        ChatRequest {
            messages,
            params: self.params(Role::Base, 0),
            cache: Default::default(),
        }
    }

    /// Scores `answer` to `q` on the chosen aspects.
    pub async fn score(
        &self,
        q: &PromptRecord,
        choice: &AspectChoice,
        answer: &str,
    ) -> Result<Usable<Evaluation>, ItemError> {
        let aspects = &choice.aspects;
        let text = self.render(
            "optimize_score.jinja",
            minijinja::context! {
                query => &q.text, answer => answer, aspects => aspects,
                reasoning => &choice.reasoning, analysis => &choice.analysis,
            },
        )?;
        let got = self
            .ask(Role::Evaluator, "optimize-score", &q.id, &text, |t| {
                parse_scores(t, aspects)
            })
            .await?;
        let got = match got {
            Ok(scores) => Ok(scores),
            Err(why) => self
                .score_by_logprobs(q, aspects, answer)
                .await?
                .map_err(|lp| Unusable::Fallback {
                    first: Box::new(why),
                    fallback: Box::new(lp),
                }),
        };
        Ok(got
            .map(|scores| Evaluation {
                answer: answer.to_string(),
                reward: mean(&scores),
                scores,
            })
            .map_err(|why| why.within("evaluator")))
    }

    /// The scoring fallback (module docs): one first-token request per
    /// aspect; unusable as soon as one aspect is.
    async fn score_by_logprobs(
        &self,
        q: &PromptRecord,
        aspects: &[Aspect],
        answer: &str,
    ) -> Result<Usable<Vec<AspectScore>>, ItemError> {
        let mut out = Vec::with_capacity(aspects.len());
        for a in aspects {
            let text = self.render(
                "optimize_score_digit.jinja",
                minijinja::context! { query => &q.text, answer => answer, aspect => a },
            )?;
            let req = ChatRequest {
                messages: vec![Message::user(text)],
                params: GenParams {
                    max_tokens: DIGIT_MAX_TOKENS,
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: Some(self.seed),
                    stop: Vec::new(),
                    top_logprobs: Some(TOP_LOGPROBS),
                    n: None,
                },
                cache: Default::default(),
            };
            let c = match self
                .send(Role::Scorer, "optimize-score-logprobs", &q.id, &req)
                .await?
            {
                Ok(c) => c,
                Err(why) => return Ok(Err(why.within(format!("`{}`", a.name)))),
            };
            let Some(tops) = c.first_token_logprobs.as_deref() else {
                return Ok(Err(Unusable::NoLogprobs));
            };
            let Some((score, mass)) = expected_digit(tops) else {
                return Ok(Err(Unusable::invalid(
                    format!("`{}`", a.name),
                    format!("no digit 1–5 among the top {} first tokens", tops.len()),
                )));
            };
            if mass < MIN_DIGIT_MASS {
                return Ok(Err(Unusable::invalid(
                    format!("`{}`", a.name),
                    format!("the digits 1–5 hold {mass:.3} of the first-token probability (at least {MIN_DIGIT_MASS})"),
                )));
            }
            out.push(AspectScore {
                aspect: a.name.clone(),
                score,
                rationale: String::new(),
                method: ScoreMethod::Logprobs,
                p_digits: Some((mass * 10_000.0).round() / 10_000.0),
            });
        }
        Ok(Ok(out))
    }

    /// Answers `q` under `prompt` with the base model, then scores it.
    pub async fn evaluate(
        &self,
        prompt: &str,
        q: &PromptRecord,
        choice: &AspectChoice,
    ) -> Result<Usable<Evaluation>, ItemError> {
        let req = self.answer_request(prompt, &q.text);
        let answer = match self
            .send(Role::Base, "optimize-answer", &q.id, &req)
            .await?
        {
            Ok(c) => c.text.trim().to_string(),
            Err(why) => return Ok(Err(why.within("base model"))),
        };
        self.score(q, choice, &answer).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::names;
    use super::*;
    use serde_json::json;

    fn asp(names: &[&str]) -> Vec<Aspect> {
        names
            .iter()
            .map(|n| Aspect {
                name: n.to_string(),
                description: String::new(),
            })
            .collect()
    }

    #[test]
    fn replies_are_read_leniently_but_need_every_score() {
        let a = asp(&["Clarity", "Depth"]);
        let s = parse_scores(
            "Sure! ```json\n{\"clarity\": {\"rationale\": \"ok\", \"score\": 4}, \"Depth\": \"2\"}\n```",
            &a,
        )
        .unwrap();
        assert_eq!(s[0].score, 4.0);
        assert_eq!(s[0].rationale, "ok");
        assert_eq!(s[0].method, ScoreMethod::Json);
        assert_eq!(s[1].score, 2.0);
        let s = parse_scores(
            r#"{"scores": [{"aspect": "Clarity", "score": 5}, {"aspect": "Depth", "score": 5}]}"#,
            &a,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_scores(r#"{"Clarity": {"score": 4}}"#, &a)
            .unwrap_err()
            .to_string()
            .contains("no score for `Depth`"));
        assert!(parse_scores(r#"{"Clarity": 6, "Depth": 3}"#, &a)
            .unwrap_err()
            .to_string()
            .contains("not an integer 1–5"));
        assert!(parse_scores("no json here", &a)
            .unwrap_err()
            .to_string()
            .starts_with("not JSON"));
    }

    #[test]
    fn the_aspect_choice_keeps_two_to_five_aspects_with_the_reasoning() {
        let known = default_aspects();
        assert_eq!(known.len(), 14);
        let got =
            parse_aspects(r#"{"aspects": ["clarity", "Humour", "Clarity"]}"#, &known).unwrap();
        assert_eq!(names(&got.aspects), ["Clarity", "Humour"]);
        let paper = json!({
            "query_analysis": {"main_topic": "bread", "user_intent": "bake it", "ambiguities": ""},
            "aspects_selection": {"reasoning": "a recipe must be right and clear",
                                  "selected_aspects": ["Factuality", "Clarity", "Depth", "Helpfulness", "Conciseness", "Safety"]}
        });
        let got = parse_aspects(&paper.to_string(), &known).unwrap();
        assert_eq!(got.aspects.len(), 5, "more than 5: the first 5 are kept");
        assert_eq!(got.reasoning, "a recipe must be right and clear");
        assert_eq!(got.analysis, ["main topic: bread", "user intent: bake it"]);
        assert!(parse_aspects(r#"{"aspects": ["Clarity"]}"#, &known)
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }

    fn lp(token: &str, p: f64) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn the_logprob_score_is_the_expected_digit_over_the_digit_candidates() {
        let (e, mass) = expected_digit(&[
            lp("4", 0.3),
            lp(" 5", 0.1),
            lp("The", 0.5),
            lp("2", 0.1),
            lp("7", 0.05),
        ])
        .unwrap();
        // (0.3·4 + 0.1·5 + 0.1·2) / 0.5
        assert!((e - 3.8).abs() < 1e-9, "{e}");
        assert!((mass - 0.5).abs() < 1e-9, "{mass}");
        assert_eq!(expected_digit(&[lp("The", 0.9), lp("0", 0.1)]), None);
        let whole = AspectScore {
            aspect: "Clarity".into(),
            score: 4.0,
            rationale: "ok".into(),
            method: ScoreMethod::Json,
            p_digits: None,
        };
        assert_eq!(
            serde_json::to_value(&whole).unwrap(),
            json!({"aspect": "Clarity", "score": 4, "rationale": "ok", "method": "json"})
        );
        let frac = AspectScore {
            score: 3.456_789,
            rationale: String::new(),
            method: ScoreMethod::Logprobs,
            p_digits: Some(0.25),
            ..whole
        };
        assert_eq!(serde_json::to_value(&frac).unwrap()["score"], 3.4568);
    }
}
