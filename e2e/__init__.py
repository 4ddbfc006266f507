"""Whole-system tests for Ferry and the local Kubernetes cluster they run against."""
