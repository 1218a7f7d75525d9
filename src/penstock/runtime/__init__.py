"""The cluster runtime: job graphs, deployment, JobManager, TaskManagers, mini-cluster."""
