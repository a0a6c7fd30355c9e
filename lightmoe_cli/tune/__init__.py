"""`lightmoe tune`: search residency policy x budget x activation rule on the profile's own tasks."""
