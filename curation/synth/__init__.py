"""synthetic and synthetic_mixed.

* ``stage`` — the ``synthetic`` asset's entry point (:class:`~curation.synth.stage.SynthesisPlan`): seeds,
  methods, verification, the licence and terms policy, the rejection records.
* ``methods/`` — one module per synthesis method, registered with its settings model.
* ``teachers``, ``cache`` — teacher backends and the crash-safe generation cache.
* ``verify``, ``judges``, ``code_verify``, ``sandbox`` — verdicts on candidates, the AI and procedural judges,
  and the sandbox that runs generated code against its unit tests.
* ``terms`` — licences and usage terms of teacher models (``policy.teachers``) and how they propagate.
* ``mix`` — the ``synthetic_mixed`` asset: real and synthetic rows under quotas, weights and a synthetic cap.
"""
