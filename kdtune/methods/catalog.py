"""The built-in methods and feature methods, declared without torch: their names, parameters,
docs lines, and where each function lives (imported when first called).

The order here is :func:`~kdtune.methods.list_methods`' and
:func:`~kdtune.methods.list_feature_methods`' order. Each function named ``"module:name"``
is in the family module beside this one, which documents the formula; the contract tests
(tests/methods) load every one and check that it takes the parameters declared here.
"""

from __future__ import annotations

from kdtune.methods.params import Param
from kdtune.methods.specs import register_feature_method, register_method
from kdtune.registry import Ref

#: Logit standardization (Sun et al. 2024), a parameter of every method that declares it.
LOGIT_STANDARDIZATION = Param(
    "logit_standardization", bool, False,
    help="standardize both logits per row before the soft term (CE stays on raw logits)")
#: The weight of the feature term; each feature method declares its default.
FEATURE_WEIGHT = Param("feature_weight", float, None, low=0,
                       help="weight of the feature term (default: the feature method's)")
#: Which stage pairs a stage method reads; each declares its default.
STAGES = Param("stages", str, None,
               help="stage pairs, counted from the last stage backwards: last, all, or "
                    "indices like 1,2 (1 = last); default: the feature method's")
THESIS = "D'Amicantonio 2021"  # "Improvements to Knowledge Distillation on Deep Neural
# Networks", MSc thesis, University of Bologna

# -- logit terms (kdtune.methods.registry) ---------------------------------------------------
register_method("none", needs_teacher=False, uses_alpha=False, uses_temperature=False,
                kind="–", formula="`CE(z_s, y)`: the student alone, no teacher", paper="–",
                )(Ref("kdtune.methods.vanilla:none"))
register_method(
    "vanilla", params=[LOGIT_STANDARDIZATION],
    formula="`KL_T(softmax(z_t/T), z_s)`; with `logit_standardization` both logits first "
            "become `(z − mean z) / (1e-7 + std z)` per row",
    paper="Hinton et al. 2015; LS: Sun et al. 2024")(Ref("kdtune.methods.vanilla:vanilla"))
register_method(
    "spherical", batch_level=True,
    formula="vanilla's term on both logits rescaled to L2 norm = the batch-mean teacher norm",
    paper="Guo et al. 2020 (spherical KD)")(Ref("kdtune.methods.vanilla:spherical"))
for _version, _formula in (
        ("v1", "vanilla's term on teacher logits lowered to the runner-up where the teacher "
               "is right, zeroed where it is wrong"),
        ("v2", "as rkd_v1, but where the teacher is wrong its label logit is raised until it "
               "wins"),
        ("v3", "as rkd_v2, then every class used to lower/raise gets logit 0"),
        ("v4", "vanilla's term on the teacher's top logit lowered to its runner-up (labels not "
               "used)")):
    register_method(f"rkd_{_version}", adjust=f"kdtune.methods.relative:adjust_{_version}",
                    formula=_formula, paper=f"relative KD ({THESIS})",
                    )(Ref(f"kdtune.methods.relative:rkd_{_version}"))
register_method(
    "two_temperature", uses_temperature=False,
    params=[Param("t_right", float, low=0, low_open=True, help="T where the teacher is right"),
            Param("t_wrong", float, low=0, low_open=True, help="T where the teacher is wrong")],
    formula="`KL_{T_i}(softmax(z_t/T_i), z_s)`, `T_i` = `t_right` if the teacher is right "
            "else `t_wrong`",
    paper=f"two-temperature KD ({THESIS})")(Ref("kdtune.methods.two_temperature:two_temperature"))
register_method(
    "earth_mover",
    formula="`KL_T(p', z_s)`, `p'` = `softmax(z_t/T)` with mass moved onto the label until it "
            "is the argmax",
    paper=f"earth-mover KD ({THESIS})")(Ref("kdtune.methods.earth_mover:earth_mover"))
register_method(
    "dkd",
    params=[Param("tckd_weight", float, 1.0, low=0, help="weight of the target-class term"),
            Param("nckd_weight", float, 8.0, low=0,
                  help="weight of the non-target-class term"),
            LOGIT_STANDARDIZATION],
    formula="`tckd_weight·TCKD + nckd_weight·NCKD`: `T²·KL(b_t‖b_s)`, `b = [p_y, 1−p_y]`, and "
            "`T²·KL(q_t‖q_s)`, `q` = softmax over the non-target classes",
    paper="Zhao et al. 2022 (Decoupled KD)")(Ref("kdtune.methods.dkd:dkd"))
register_method(
    "dist", batch_level=True,
    params=[Param("dist_beta", float, 1.0, low=0, help="weight of the inter-class term"),
            Param("dist_gamma", float, 1.0, low=0, help="weight of the intra-class term")],
    formula="`T²·(dist_beta·(1 − mean_i ρ(p_s[i,:], p_t[i,:])) + dist_gamma·(1 − mean_c "
            "ρ(p_s[:,c], p_t[:,c])))`, ρ = Pearson",
    paper="Huang et al. 2022 (DIST)")(Ref("kdtune.methods.dist:dist"))
register_method(
    "tf_kd", needs_teacher=False, kind="response · self",
    params=[Param("tf_peak", float, 0.9, low=0, high=1,
                  help="the virtual teacher's probability on the label")],
    formula="`KL_T(v, z_s)`, `v` = `tf_peak` on the label, `(1 − tf_peak)/(C − 1)` elsewhere",
    paper="Yuan et al. 2020 (teacher-free KD)")(Ref("kdtune.methods.tf_kd:tf_kd"))
register_method(
    "dml", peers="kdtune.methods.dml:make_peers", kind="response · online",
    params=[Param("dml_peers", int, 2, low=2, help="students trained together (the student "
                                                    "is one of them)")],
    formula="peer k: `mean_{j≠k} KL_T(softmax(z_j/T), z_k)` over the other peers (no teacher; "
            "`dml_peers` students of the same architecture train together)",
    paper="Zhang et al. 2018 (DML)")(Ref("kdtune.methods.dml:dml"))

# -- feature terms (kdtune.methods.features) -------------------------------------------------
register_feature_method("none", inputs=None, formula="no feature term", paper="–",
                        )(Ref("kdtune.methods.features:none"))
register_feature_method(
    "fitnet", inputs="stages", params=[FEATURE_WEIGHT, STAGES],
    defaults={"feature_weight": 100.0, "stages": "last"}, adapt=True,
    formula="mean over pairs of `mse(adapter(f_s), f_t)`; adapter: 1×1 conv + BN (maps) or "
            "linear (vectors) when shapes differ",
    paper="Romero et al. 2015 (FitNets)")(Ref("kdtune.methods.fitnet:fitnet"))
register_feature_method(
    "at", inputs="stages", maps_only=True,
    params=[FEATURE_WEIGHT, STAGES,
            Param("p", int, 2, low=1, high=4, help="the power of the attention map")],
    defaults={"feature_weight": 1000.0, "stages": "all"},
    formula="sum over pairs of `mean((a(f_s) − a(f_t))²)`, `a(f) = normalize(mean_c f^p)`; "
            "maps pooled to the smaller size",
    paper="Zagoruyko & Komodakis 2017 (AT)")(Ref("kdtune.methods.at:at"))
register_feature_method(
    "sp", inputs="stages", params=[FEATURE_WEIGHT, STAGES],
    defaults={"feature_weight": 3000.0, "stages": "last"}, kind="relation",
    formula="sum over pairs of `Σ(G_s − G_t)² / N²`, `G = normalize(f fᵀ)` per row",
    paper="Tung & Mori 2019 (SP)")(Ref("kdtune.methods.sp:sp"))
register_feature_method(
    "relational", inputs="embedding",
    params=[FEATURE_WEIGHT,
            Param("distance_weight", float, 25.0, low=0, help="weight of the distance term"),
            Param("angle_weight", float, 50.0, low=0, help="weight of the angle term")],
    defaults={"feature_weight": 1.0}, kind="relation",
    formula="`distance_weight·smoothL1(ψ_D(e_s), ψ_D(e_t)) + angle_weight·smoothL1(ψ_A(e_s), "
            "ψ_A(e_t))` on embeddings: distances over their mean, cosines of difference "
            "vectors",
    paper="Park et al. 2019 (RKD)")(Ref("kdtune.methods.relational:relational"))
register_feature_method(
    "pkt", inputs="embedding", params=[FEATURE_WEIGHT], defaults={"feature_weight": 30000.0},
    kind="relation",
    formula="`mean(P_t log((P_t+ε)/(P_s+ε)))`, `P` = rows of `(cos + 1)/2` normalised to sum 1",
    paper="Passalis & Tefas 2018 (PKT)")(Ref("kdtune.methods.pkt:pkt"))
register_feature_method(
    "crd", inputs="embedding", build="kdtune.methods.crd:build_term",
    params=[FEATURE_WEIGHT,
            Param("crd_negatives", int, 4096, low=1,
                  help="negatives per sample (capped by the training set size)"),
            Param("crd_t", float, 0.07, low=0, low_open=True,
                  help="temperature of the contrastive scores")],
    defaults={"feature_weight": 0.8}, kind="relation",
    formula="NCE over `exp(⟨bank, v⟩/crd_t)/Z` of L2-normalised 128-d heads on both "
            "embeddings, student and teacher memory banks (momentum 0.5), `crd_negatives` "
            "negatives; trained heads",
    paper="Tian et al. 2020 (CRD)")(Ref("kdtune.methods.crd:crd"))
