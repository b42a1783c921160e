"""Whole collections: inputs streamed in one order, rows committed so a killed run resumes, one machine or many."""
