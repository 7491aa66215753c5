"""compliance_report and inspection: trace any row's lineage, report licences and obligations for an
intended use, and describe each dataset version with statistics and plots.

* ``trace``      — the row audit (``distillery audit ROW_ID``): a row's chain to its raw records and
  where it went;
* ``report``     — the ``compliance_report`` asset: licences, attribution, teachers' terms, violations;
* ``inspection`` — the ``inspection`` asset: lengths, breakdowns, outliers, agreement, plots.
"""
