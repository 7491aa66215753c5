"""compliance_report and inspection: trace any row's lineage, report licences and obligations for an
intended use, and describe each dataset version with statistics and plots."""
