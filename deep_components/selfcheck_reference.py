"""The self-check reference values (docs/methods.md §11): what the authors' reference code computes
on :func:`deep_components.selfcheck.selfcheck_inputs`, for the two settings it has.

``python -m deep_components.selfcheck`` compares this implementation against them (and exits 1 on
a mismatch); the loss and metric tests assert them too.  Keys: ("two" | "three", ...).
"""
from __future__ import annotations

#: short key of a setting in the tables below
SHORT = {"two_stage": "two", "three_stage": "three"}

# (loss, [(|g_t|, g_t[0,0]) per stage], [dL/dw_t] or None, {component: value})  -- methods.md §11
LOSSES = {
    ("two", "bce"): (1.9249246, [(6.685802e-02, -4.083524e-03), (9.101927e-02, -5.152582e-03)],
                     None, {}),
    ("two", "icc"): (0.4809839, [(1.989267e-02, 0.0), (2.951346e-02, -3.344914e-03)], None, {}),
    ("two", "rankflow"): (5.0186572, [(4.859627e-01, -2.492836e-02), (7.515384e-02, -3.435054e-03)],
                          None, {}),
    ("two", "fs_ranknet"): (7.2309942, [(3.524628e-01, -2.124700e-02),
                                        (2.819184e-01, -1.595667e-02)], None, {}),
    ("two", "fs_lambdaloss"): (33.4158707, [(2.033958, -2.715545e-01), (2.156503, -1.980558e-01)],
                               None, {}),
    ("two", "arf"): (1.9349747, [(5.304575e-03, -5.947177e-04), (7.341480e-03, -2.743639e-04)],
                     [0.9069331, 0.9076355],
                     {"global/retrieval": 0.0930669, "global/prerank": 0.0923645,
                      "relax/retrieval": 0.9193584, "relax/prerank": 0.9229006}),
    ("two", "arf_v2"): (1.9107217, [(1.056595e-02, -2.168532e-03), (1.002867e-02, -1.902703e-03)],
                        [0.9069331, 0.9076355],
                        {"relax/retrieval": 1.1199332, "relax/prerank": 0.6980729}),
    ("two", "lcron"): (1.5084666, [(5.447333e-02, -8.234977e-03), (5.640509e-02, -4.697532e-03)],
                       [0.3643119, 0.3583734],
                       {"e2e": 0.8698093, "single/retrieval": 0.6356881,
                        "single/prerank": 0.6416266}),
    ("three", "bce"): (2.8852341, [(5.730108e-02, -3.266819e-03), (6.488471e-02, -2.576291e-03),
                                   (9.606576e-02, -3.572538e-03)], None, {}),
    ("three", "icc"): (0.8987898, [(1.355015e-02, 0.0), (4.641228e-02, 0.0),
                                   (9.086063e-02, -2.440322e-03)], None, {}),
    ("three", "rankflow"): (9.9867363, [(4.699389e-01, -2.642260e-02), (5.299386e-01, -2.651645e-02),
                                        (7.802022e-02, -2.381692e-03)], None, {}),
    ("three", "fs_ranknet"): (12.6176357, [(2.916924e-01, -1.919275e-02),
                                           (3.411227e-01, -1.584530e-02),
                                           (3.357613e-01, -1.287531e-02)], None, {}),
    ("three", "fs_lambdaloss"): (64.1851654, [(2.040931, -2.826197e-01), (2.393920, -2.196003e-01),
                                              (2.564138, -1.802187e-01)], None, {}),
    ("three", "arf"): (2.4769673, [(5.071816e-03, -3.537264e-04), (6.860661e-03, -1.186911e-04),
                                   (9.221622e-03, 8.257957e-06)], [0.9216934, 0.9213256, 0.9211770],
                       {"global/retrieval": 0.0783066, "global/prerank": 0.0786744,
                        "global/rank": 0.0788230, "relax/retrieval": 0.7794402,
                        "relax/prerank": 0.7838806, "relax/rank": 0.7957444}),
    ("three", "arf_v2"): (2.9351652, [(1.168705e-02, -2.379039e-03), (1.086739e-02, -2.060533e-03),
                                      (1.061342e-02, -1.792300e-03)],
                          [0.9216934, 0.9213256, 0.9211770],
                          {"relax/retrieval": 1.3486390, "relax/prerank": 0.8513926,
                           "relax/rank": 0.6172314}),
    ("three", "lcron"): (4.8572917, [(9.944291e-02, -1.749372e-02), (9.778570e-02, -1.969155e-02),
                                     (9.550937e-02, -2.119623e-02)],
                         [-1.287171, -1.387451, -1.539276],
                         {"e2e": 1.2503424, "single/retrieval": 2.2871716,
                          "single/prerank": 2.3874516, "single/rank": 2.5392754}),
}

# (setting, stage index) -> (NDCG@10, Recall@10@M, Kendall tau-b)   -- methods.md §11
METRICS = {
    ("two", 0): (0.335560, 0.85, -0.114198), ("two", 1): (0.353620, 0.60, 0.015508),
    ("three", 0): (0.362937, 0.85, 0.041540), ("three", 1): (0.332431, 0.65, -0.022980),
    ("three", 2): (0.280932, 0.40, -0.045076),
}
JOINT = {"two": 0.55, "three": 0.40}

#: tolerances of the comparison (relative, absolute) per quantity
TOLERANCE = {"loss": (2e-6, 1e-8), "grad_norm": (1e-5, 1e-8), "grad_00": (1e-5, 1e-9),
             "weight_grad": (1e-5, 1e-8), "component": (1e-6, 1e-8), "ndcg": (0.0, 1e-6),
             "recall": (0.0, 1e-12), "kendall": (0.0, 1e-6), "joint": (0.0, 1e-12)}
