# Stage 9: `snakemake --report report.html` builds an HTML report from the tables and figures
# (their rules mark them with report(...); captions live in workflow/report/*.rst).


report: "../report/workflow.rst"
