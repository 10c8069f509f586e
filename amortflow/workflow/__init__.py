"""The staged amortized workflow: configuration, pipeline and per-dataset result."""
from amortflow.workflow.config import WorkflowConfig
from amortflow.workflow.result import ROUTES, WorkflowResult
from amortflow.workflow.run import run_workflow, validate_datasets

__all__ = ["WorkflowConfig", "WorkflowResult", "ROUTES", "run_workflow", "validate_datasets"]
