"""The staged amortized workflow: configuration, stages, pipeline and per-dataset result."""
from amortflow.workflow.config import WorkflowConfig
from amortflow.workflow.pipeline import Records, Stage, StageInput, StageResult, restrict, run_stages
from amortflow.workflow.result import ROUTES, ResultFileError, WorkflowResult
from amortflow.workflow.refine import refine_stage
from amortflow.workflow.run import run_workflow, validate_datasets
from amortflow.workflow.stages import amortized_stage, default_stages, mcmc_stage, psis_stage
from amortflow.workflow.point import point_estimate_stage
from amortflow.workflow.surrogate import surrogate_mcmc_stage, surrogate_ood_stage, surrogate_stages

__all__ = ["WorkflowConfig", "WorkflowResult", "ResultFileError", "ROUTES", "run_workflow",
           "validate_datasets", "Stage", "StageInput", "StageResult", "Records", "run_stages", "restrict",
           "amortized_stage", "psis_stage", "refine_stage", "mcmc_stage", "default_stages",
           "point_estimate_stage", "surrogate_ood_stage", "surrogate_mcmc_stage", "surrogate_stages"]
